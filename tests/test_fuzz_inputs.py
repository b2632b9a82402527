"""Hypothesis fuzzing of the Python readers of files that cross stage boundaries: ``masks.json``
(``ModelMasks.load``) and GLUE TSVs (``glue.read_tsv``). Property: a valid result or the module's
own error type naming the file — never a stray IndexError/AttributeError/... from deep inside.
In-process (pure Python cannot segfault); bounded by ``max_examples`` and a deadline."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline_steps import glue
from pipeline_steps.tiles import ModelMasks

FUZZ = settings(max_examples=300, deadline=2000, database=None, suppress_health_check=list(HealthCheck))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=True) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
layout = st.fixed_dictionaries({
    "shape": st.lists(st.integers(-4, 64), min_size=0, max_size=3) | json_values,
    "tile": st.lists(st.integers(-2, 32), min_size=0, max_size=3) | json_values,
    "kept": st.lists(st.integers(-3, 40), max_size=8) | json_values,
})
masks_payload = st.fixed_dictionaries({
    "version": st.just(1) | json_values,
    "layouts": st.dictionaries(st.text(max_size=8), layout | json_values, max_size=3) | json_values,
    "pruned_heads": st.dictionaries(st.text(max_size=3) | st.integers(-2, 5).map(str),
                                    st.lists(st.integers(-2, 8) | json_values, max_size=3) | json_values,
                                    max_size=3) | json_values,
}) | json_values


@FUZZ
@given(payload=masks_payload)
def test_masks_file_loads_or_names_itself(tmp_path_factory, payload) -> None:
    """Any JSON in masks.json: a ModelMasks whose layouts are self-consistent, or ValueError naming the file."""
    path = tmp_path_factory.mktemp("m") / "masks.json"
    path.write_text(json.dumps(payload))
    try:
        masks = ModelMasks.load(path)
    except ValueError as err:
        assert str(path) in str(err)
        return
    for name, lay in masks.layouts.items():
        assert lay.dense_mask().shape == lay.shape, name


@FUZZ
@given(body=st.lists(st.lists(st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=8)
                              | st.sampled_from(["0", "1", "2", "entailment", "5.5", "-1", "nan"]),
                              max_size=6), max_size=6),
       header=st.sampled_from([None, "task", "shuffled", "short"]),
       task=st.sampled_from(sorted(glue.TASKS)))
def test_glue_tsv_reads_or_names_itself(tmp_path_factory, body, header, task) -> None:
    """Any tab-separated content (with the task's header, a shuffled or short one, or none):
    examples with labels from the task's set, or DataError naming the file."""
    spec = glue.TASKS[task]
    cols = list(spec.columns)
    head = {"task": cols, "shuffled": cols[::-1], "short": cols[:-1], None: None}[header]
    rows = ([head] if head else []) + body
    path = tmp_path_factory.mktemp("t") / "train.tsv"
    path.write_text("".join("\t".join(r) + "\n" for r in rows))
    try:
        examples = glue.read_tsv(path, spec)
    except glue.DataError as err:
        assert str(path) in str(err)
        return
    for ex in examples:
        assert spec.is_regression and 0.0 <= ex.label <= 5.0 or ex.label in range(spec.num_labels)
