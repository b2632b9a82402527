"""Parity of libet's CPU backend with HF transformers (eager attention, float32).

Bar: max |logit diff| <= 1e-4 x logit scale, 100% prediction agreement, for ragged batches with
lengths 1..max, with random tile masks and pruned heads applied to the PyTorch model too, and the
padded layout equal to the ragged one.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libet_build import apply_masks, export, libet, ragged_batch, random_bert, random_masks, torch_logits  # noqa: F401
from pipeline_steps.engine import Engine

CONFIGS = [
    dict(layers=2, hidden=64, heads=4, intermediate=128, vocab=97, max_positions=40, labels=3),
    dict(layers=3, hidden=96, heads=6, intermediate=160, vocab=211, max_positions=64, labels=2, type_vocab=3),
    dict(layers=1, hidden=48, heads=3, intermediate=96, vocab=50, max_positions=17, labels=1),
    dict(layers=2, hidden=128, heads=2, intermediate=256, vocab=64, max_positions=33, labels=2),
    dict(layers=2, hidden=40, heads=2, intermediate=72, vocab=30, max_positions=21, labels=5),
]
# head size 16, 16, 16, 64 (BERT-base's), 20 (not a multiple of the 16-wide vector: padded paths);
# hidden 40 and intermediate 72 are not multiples of the 16-row panels either.
TILES = {40: (8, 8)}


def assert_parity(ours: np.ndarray, ref: np.ndarray) -> None:
    scale = max(float(np.abs(ref).max()), 1e-3)
    assert np.abs(ours - ref).max() <= 1e-4 * scale, (np.abs(ours - ref).max(), scale)
    if ref.shape[1] > 1:
        assert np.array_equal(ours.argmax(axis=1), ref.argmax(axis=1))


def all_lengths(max_len: int) -> list[int]:
    """Every length 1..max_len once, shuffled: a maximally ragged batch."""
    lengths = list(range(1, max_len + 1))
    np.random.default_rng(max_len).shuffle(lengths)
    return lengths


@pytest.mark.parametrize("cfg", CONFIGS, ids=["h64", "h96-3types", "h48-regression", "h128-headdim64", "h40-headdim20"])
@pytest.mark.parametrize("pruned", [False, True], ids=["dense", "tiles+heads"])
def test_parity_with_transformers(libet, tmp_path, cfg, pruned):
    model = random_bert(seed=len(cfg) + cfg["hidden"], **cfg)
    masks = random_masks(model, seed=7, tile=TILES.get(cfg["hidden"], (16, 16)), density=0.4) if pruned else None
    if masks:
        apply_masks(model, masks)
    manifest = export(model, tmp_path / "npy", masks)
    rng = np.random.default_rng(0)
    tokens, segments, lengths = ragged_batch(rng, all_lengths(cfg["max_positions"]), cfg["vocab"],
                                             cfg.get("type_vocab", 2))
    ref, ref_hidden = torch_logits(model, tokens, segments, lengths)
    with Engine(libet.lib, manifest, threads=2) as engine:
        logits, hidden = engine.forward(tokens, lengths, segments, return_hidden=True)
        padded = engine.forward(tokens, lengths, segments, padded=True)
        if masks:
            assert engine.info["pruned_heads"] == sum(len(h) for h in masks.pruned_heads.values())
            assert 0 < engine.info["kept_tiles"] < engine.info["total_tiles"]
            assert engine.info["kept_params"] < engine.info["total_params"]
    assert engine.backend == "cpu"
    assert_parity(logits, ref)
    hidden_ref = np.concatenate(ref_hidden)
    assert np.abs(hidden - hidden_ref).max() <= 1e-4 * np.abs(hidden_ref).max()
    np.testing.assert_allclose(padded, logits, rtol=0, atol=1e-6 * max(1.0, float(np.abs(logits).max())))


def test_rectangular_tiles_and_all_heads_but_one(libet, tmp_path):
    """Tiles of 8x32 (rows of tiles span panels) and heavy head pruning."""
    model = random_bert(seed=3, layers=2, hidden=64, heads=4, intermediate=128)
    masks = random_masks(model, seed=3, tile=(8, 32), density=0.6)
    masks.pruned_heads = {0: [0, 1, 3], 1: [2]}
    apply_masks(model, masks)
    manifest = export(model, tmp_path / "npy", masks)
    tokens, segments, lengths = ragged_batch(np.random.default_rng(1), [40, 1, 7, 23], 97)
    with Engine(libet.lib, manifest) as engine:
        logits = engine.forward(tokens, lengths, segments)
    assert_parity(logits, torch_logits(model, tokens, segments, lengths)[0])


def test_fully_pruned_weight(libet, tmp_path):
    """A weight with no kept tile at all (e.g. an FFN removed) still runs and matches."""
    model = random_bert(seed=4)
    masks = random_masks(model, seed=4, density=0.5, prune_heads=False)
    name = "bert.encoder.layer.1.intermediate.dense.weight"
    masks.layouts[name] = type(masks.layouts[name]).from_tile_mask(
        np.zeros(masks.layouts[name].grid, dtype=bool), (16, 16))
    apply_masks(model, masks)
    manifest = export(model, tmp_path / "npy", masks)
    tokens, segments, lengths = ragged_batch(np.random.default_rng(2), [12, 30], 97)
    with Engine(libet.lib, manifest) as engine:
        logits = engine.forward(tokens, lengths, segments)
    assert_parity(logits, torch_logits(model, tokens, segments, lengths)[0])


def test_minilm_parity(libet, tmp_path):
    """The embedded MiniLM (6 layers, hidden 384) with a random 2-label head, dense and pruned."""
    from pipeline_steps import modeling

    model = modeling.load_classifier(modeling.EMBEDDED_MODEL, num_labels=2).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        model.classifier.weight.normal_(0.0, 1.0)
    rng = np.random.default_rng(3)
    tokens, segments, lengths = ragged_batch(rng, [1, 2, 17, 64, 128, 5, 99, 128], model.config.vocab_size)
    ref = torch_logits(model, tokens, segments, lengths)[0]
    manifest = export(model, tmp_path / "dense", None)
    with Engine(libet.lib, manifest) as engine:
        assert_parity(engine.forward(tokens, lengths, segments), ref)
    masks = random_masks(model, seed=5, tile=(16, 16), density=0.3)
    apply_masks(model, masks)
    ref = torch_logits(model, tokens, segments, lengths)[0]
    manifest = export(model, tmp_path / "pruned", masks)
    with Engine(libet.lib, manifest) as engine:
        assert_parity(engine.forward(tokens, lengths, segments), ref)


def test_float16_export_close(libet, tmp_path):
    """f16 weights are widened to f32 on load; logits stay close to the f32 model."""
    model = random_bert(seed=6)
    tokens, segments, lengths = ragged_batch(np.random.default_rng(4), [5, 40, 11], 97)
    ref = torch_logits(model, tokens, segments, lengths)[0]
    with Engine(libet.lib, export(model, tmp_path / "f16", None, dtype="float16")) as engine:
        logits = engine.forward(tokens, lengths, segments)
    assert np.abs(logits - ref).max() <= 2e-2 * np.abs(ref).max()


def test_threads_and_batching_do_not_change_results(libet, tmp_path):
    """One thread or two, one batch or one sequence at a time: identical logits."""
    model = random_bert(seed=8)
    manifest = export(model, tmp_path / "npy")
    tokens, segments, lengths = ragged_batch(np.random.default_rng(5), [3, 40, 9, 27, 1], 97)
    with Engine(libet.lib, manifest, threads=1) as one, Engine(libet.lib, manifest, threads=2) as two:
        a = one.forward(tokens, lengths, segments)
        b = two.forward(tokens, lengths, segments)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        singles = np.concatenate([two.forward(tokens[offsets[i]:offsets[i + 1]], lengths[i:i + 1],
                                              segments[offsets[i]:offsets[i + 1]]) for i in range(len(lengths))])
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, singles)


def test_segments_default_to_zero_and_benchmark(libet, tmp_path):
    model = random_bert(seed=9)
    manifest = export(model, tmp_path / "npy")
    tokens, _, lengths = ragged_batch(np.random.default_rng(6), [8, 16], 97)
    with Engine(libet.lib, manifest) as engine:
        np.testing.assert_array_equal(engine.forward(tokens, lengths),
                                      engine.forward(tokens, lengths, np.zeros_like(tokens)))
        ms = engine.benchmark(tokens, lengths, warmup=1, iters=4)
    assert ms.shape == (4,) and np.all(ms > 0)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lengths=st.lists(st.integers(1, 40), min_size=1, max_size=9), padded=st.booleans())
def test_any_ragged_batch_equals_sequences_one_by_one(libet, hypothesis_manifest, lengths, padded):
    """Property: a sequence's logits do not depend on the rest of its batch (ragged or padded)."""
    tokens, segments, lens = ragged_batch(np.random.default_rng(len(lengths)), lengths, 97)
    with Engine(libet.lib, hypothesis_manifest) as engine:
        batch = engine.forward(tokens, lens, segments, padded=padded)
        offsets = np.concatenate([[0], np.cumsum(lens)])
        for i in range(len(lens)):
            one = engine.forward(tokens[offsets[i]:offsets[i + 1]], lens[i:i + 1], segments[offsets[i]:offsets[i + 1]])
            np.testing.assert_allclose(batch[i], one[0], rtol=0, atol=1e-6 * max(1.0, float(np.abs(one).max())))


@pytest.fixture(scope="module")
def hypothesis_manifest(tmp_path_factory):
    model = random_bert(seed=12)
    masks = random_masks(model, seed=12, density=0.5)
    apply_masks(model, masks)
    return export(model, tmp_path_factory.mktemp("hyp") / "npy", masks)


def test_concurrent_calls_on_one_model(libet, hypothesis_manifest):
    """Calls from several Python threads (cffi releases the GIL) give the sequential results; each
    thread sees its own error message."""
    from concurrent.futures import ThreadPoolExecutor

    from pipeline_steps.engine import EngineError

    rng = np.random.default_rng(13)
    batches = [ragged_batch(rng, list(rng.integers(1, 41, size=4)), 97) for _ in range(8)]
    with Engine(libet.lib, hypothesis_manifest) as engine:
        expected = [engine.forward(t, ln, s) for t, s, ln in batches]

        def work(i: int):
            if i % 3 == 0:
                bad = batches[i][0].copy()
                bad[0] = 97
                with pytest.raises(EngineError, match=r"token_ids\[0\] = 97"):
                    engine.forward(bad, batches[i][2])
            t, s, ln = batches[i]
            return engine.forward(t, ln, s)

        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(work, range(len(batches))))
    for got, want in zip(results, expected):
        np.testing.assert_array_equal(got, want)
