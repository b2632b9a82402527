"""synthetic.py: determinism, balance, uniqueness, and that labels need both sentences."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest

from pipeline_steps import synthetic


def test_same_seed_same_pairs_other_seed_other_pairs():
    a = synthetic.generate_splits({"train": 200, "dev": 50}, seed=7)
    b = synthetic.generate_splits({"train": 200, "dev": 50}, seed=7)
    c = synthetic.generate_splits({"train": 200, "dev": 50}, seed=8)
    assert a == b and a["train"] != c["train"]


def test_balanced_labels_unique_pairs_no_leak_between_splits():
    splits = synthetic.generate_splits({"train": 2000, "dev": 500, "test": 500}, seed=3)
    keys = [frozenset((p.text_a, p.text_b)) for ps in splits.values() for p in ps]
    assert len(keys) == len(set(keys)) == 3000
    for pairs in splits.values():
        labels = Counter(p.label for p in pairs)
        assert labels[0] == labels[1]
        assert all((p.kind == "paraphrase") == (p.label == 1) for p in pairs)
    kinds = synthetic.kind_counts(splits["train"])
    assert {"negation", "role_swap", "number", "verb", "day", "noun", "order", "person", "action"} <= set(kinds)


def test_paraphrase_renderings_differ_in_surface_but_not_in_event():
    rng = random.Random(0)
    event = synthetic.Transfer("Anna", "Tom", "give", 3, "gift", "Monday", negated=True)
    texts = {synthetic.render_transfer(event, rng) for _ in range(200)}
    assert len(texts) > 20
    assert all("Anna" in t and "Tom" in t and "Monday" in t for t in texts)
    assert all(("3" in t or "three" in t.lower()) and ("not" in t or "n't" in t) for t in texts)
    assert any(t.startswith("On Monday,") for t in texts) and any("by Anna" in t for t in texts)


def test_changes_keep_the_event_valid_and_different():
    rng = random.Random(1)
    for _ in range(300):
        for kind, _, change in synthetic.TRANSFER_CHANGES:
            e = synthetic.random_transfer(rng)
            changed = change(e, rng)
            assert changed != e and changed.agent != changed.recipient, kind
        for kind, _, change in synthetic.SEQUENCE_CHANGES:
            e = synthetic.random_sequence(rng)
            changed = change(e, rng)
            assert changed != e and changed.first_person != changed.second_person, kind
            assert changed.first_action != changed.second_action, kind


@pytest.mark.parametrize("side", ["text_a", "text_b"])
def test_words_of_one_sentence_do_not_predict_the_label(side):
    """Each word's frequency in either sentence is about the same in both classes."""
    pairs = synthetic.generate_splits({"train": 6000}, seed=11)["train"]
    by_label = {0: Counter(), 1: Counter()}
    for p in pairs:
        by_label[p.label].update(set(getattr(p, side).lower().rstrip(".").replace(",", "").split()))
    for word in set(by_label[0]) | set(by_label[1]):
        n0, n1 = by_label[0][word], by_label[1][word]
        if n0 + n1 >= 100:  # within 4 standard deviations of an even split
            assert abs(n0 - n1) < 4 * (n0 + n1) ** 0.5, (word, n0, n1)


def test_too_small_split_is_rejected():
    with pytest.raises(ValueError, match="'dev'"):
        synthetic.generate_splits({"dev": 1}, seed=0)
