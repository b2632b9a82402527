"""Tile selection: prunable weights, tile norms, exact counts, masks exactness and reproducibility."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline_steps.head_pruning import attention_layers, head_weight_scores
from pipeline_steps.mask_selection import SparsityPlan, pool_sizes, select_masks
from pipeline_steps.masking import apply_masks, element_masks, weight_arrays
from pipeline_steps.sensitivity import allocate
from pipeline_steps.tile_pruning import (layouts_from_model, masks_tile_sparsity, model_prunable_weights,
                                         prunable_weights, remove_lowest, split_count, tile_norms)
from pipeline_steps.tiles import ModelMasks
from pruning_fixtures import tiny_bert

KINDS = {"qkv": 1.0, "attn_output": 1.0, "ffn": 1.0}


def _plan(model, target, tile=(16, 16), heads=True, seed=13, share=0.5):
    weights = model_prunable_weights(model)
    arrays = weight_arrays(model, weights)
    scores = head_weight_scores(attention_layers(weights, model.config.num_attention_heads), arrays) if heads else None
    return weights, arrays, SparsityPlan(target, allocate(weights, target, KINDS), tile, seed, scores, share)


def test_prunable_weights_are_the_six_encoder_linears_per_layer():
    model = tiny_bert()
    weights = model_prunable_weights(model)
    assert len(weights) == 6 * model.config.num_hidden_layers
    names = {w.name for w in weights}
    assert "bert.encoder.layer.1.attention.self.value.weight" in names
    assert not any("pooler" in n or "classifier" in n or "embeddings" in n for n in names)
    assert [w.role for w in weights[:6]] == ["query", "key", "value", "attn_output", "ffn_in", "ffn_out"]
    with pytest.raises(ValueError, match="no encoder linear weights"):
        prunable_weights({"classifier.weight": (2, 64)})
    with pytest.raises(ValueError, match="2-D"):
        prunable_weights({"bert.encoder.layer.0.attention.self.query.weight": (64,)})


def test_tile_norms_match_a_loop():
    w = torch.randn(32, 48)
    norms = tile_norms(w, (16, 8))
    assert norms.shape == (2, 6)
    for i in range(2):
        for j in range(6):
            assert norms[i, j] == pytest.approx(float(w[16 * i:16 * i + 16, 8 * j:8 * j + 8].norm()), rel=1e-5)
    with pytest.raises(ValueError, match="does not divide"):
        tile_norms(w, (16, 7))


def test_remove_lowest_removes_exactly_the_lowest_and_breaks_ties_by_seed():
    scores = torch.tensor([[5.0, 1.0, 3.0], [2.0, 4.0, 0.5]])
    keep = remove_lowest(scores, torch.ones(2, 3, dtype=torch.bool), 3, seed=0)
    assert keep.tolist() == [[True, False, True], [False, True, False]]
    ties = torch.zeros(4, 8)
    a = remove_lowest(ties, torch.ones(4, 8, dtype=torch.bool), 10, seed=1)
    b = remove_lowest(ties, torch.ones(4, 8, dtype=torch.bool), 10, seed=1)
    c = remove_lowest(ties, torch.ones(4, 8, dtype=torch.bool), 10, seed=2)
    assert torch.equal(a, b) and int((~a).sum()) == 10 and not torch.equal(a, c)
    with pytest.raises(ValueError, match="only"):
        remove_lowest(scores, keep, 4, seed=0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 10), st.integers(0, 20)), min_size=1, max_size=8), st.data())
def test_split_count_is_exact_and_respects_capacities(slots, data):
    weights = [w for w, _ in slots]
    caps = [c for _, c in slots]
    total = data.draw(st.integers(0, sum(caps)))
    parts = split_count(total, weights, caps)
    assert sum(parts) == total
    assert all(0 <= p <= c for p, c in zip(parts, caps))


@pytest.mark.parametrize("tile", [(16, 16), (16, 64), (32, 16)])
@pytest.mark.parametrize("target", [0.3, 0.5, 0.8, 0.9])
def test_masks_are_exact_and_meet_the_target_within_one_tile(tile, target):
    model = tiny_bert()
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    weights, arrays, plan = _plan(model, target, tile, heads=tile[0] <= 16)
    masks = select_masks(arrays, weights, model.config.num_attention_heads, plan)
    n_tiles = sum(pool_sizes(weights, tile).values())
    assert abs(masks_tile_sparsity(masks) - target) <= 1.0 / n_tiles
    emasks = element_masks(model, masks)
    apply_masks(model, emasks)
    params = dict(model.named_parameters())
    for w in weights:
        lay = masks.layouts[w.name]
        tiles_kept = torch.from_numpy(lay.dense_mask())
        value = params[w.name].detach()
        assert torch.all(value[~tiles_kept] == 0), f"{w.name}: a removed tile is not zero"
        allowed = emasks.get(w.name, torch.ones_like(tiles_kept))
        assert torch.all(allowed <= tiles_kept), f"{w.name}: element mask exceeds the tile mask"
        assert torch.equal(value[allowed], original[w.name][allowed]), f"{w.name}: kept values changed"
        if w.kind == "ffn":  # no attention rule: kept tiles are whole
            assert torch.equal(allowed, tiles_kept)


def test_structured_attention_pruning_needs_tile_rows_dividing_the_head_dim():
    model = tiny_bert()  # head_dim 16
    weights, arrays, plan = _plan(model, 0.5, (32, 16), heads=True)
    with pytest.raises(ValueError, match="head dimension"):
        select_masks(arrays, weights, model.config.num_attention_heads, plan)


def test_masks_are_reproducible_from_the_seed_and_round_trip(tmp_path):
    model = tiny_bert()
    weights, arrays, plan = _plan(model, 0.6)
    a = select_masks(arrays, weights, 4, plan)
    b = select_masks(arrays, weights, 4, plan)
    for name in a.layouts:
        assert np.array_equal(a.layouts[name].kept, b.layouts[name].kept)
    assert a.pruned_heads == b.pruned_heads
    a.save(tmp_path / "masks.json")
    loaded = ModelMasks.load(tmp_path / "masks.json")
    assert loaded.pruned_heads == a.pruned_heads
    assert all(np.array_equal(loaded.layouts[n].kept, a.layouts[n].kept) for n in a.layouts)
    e1, e2 = element_masks(model, a), element_masks(model, loaded)
    assert e1.keys() == e2.keys() and all(torch.equal(e1[k], e2[k]) for k in e1)
    apply_masks(model, e1)
    from_model = layouts_from_model(model, (16, 16))
    assert all(np.array_equal(from_model[n].kept, a.layouts[n].kept) for n in a.layouts)


def test_equal_tiles_are_broken_differently_by_different_seeds():
    model = tiny_bert()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.01)
    weights, arrays, plan = _plan(model, 0.5, heads=False)
    plan2 = SparsityPlan(plan.target, plan.pool_sparsity, plan.tile, plan.seed + 1)
    a = select_masks(arrays, weights, 4, plan)
    b = select_masks(arrays, weights, 4, plan2)
    assert any(not np.array_equal(a.layouts[n].kept, b.layouts[n].kept) for n in a.layouts)


def test_cubic_ramp_and_scaled_plans():
    from pipeline_steps.mask_selection import cubic_ramp

    assert cubic_ramp(0.8, 0, 100) == 0.0 and cubic_ramp(0.8, 100, 100) == 0.8 and cubic_ramp(0.8, 500, 100) == 0.8
    assert 0.0 < cubic_ramp(0.8, 30, 100) < cubic_ramp(0.8, 60, 100) < 0.8
    assert cubic_ramp(0.5, 3, 0) == 0.5
    model = tiny_bert()
    weights, arrays, plan = _plan(model, 0.8)
    half = plan.scaled(0.4)
    assert half.target == 0.4 and all(half.pool_sparsity[k] == pytest.approx(v / 2) for k, v in plan.pool_sparsity.items())
    masks = select_masks(arrays, weights, 4, half)
    assert abs(masks_tile_sparsity(masks) - 0.4) <= 1.0 / sum(pool_sizes(weights, (16, 16)).values())
    with pytest.raises(ValueError, match="scaled plan"):
        plan.scaled(0.9)
