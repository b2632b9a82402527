"""The attention-aware policy: per-layer sensitivity, head importance, allocation to the target."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline_steps.sensitivity import MAX_POOL_SPARSITY, allocate, head_importance, layer_sensitivity, layer_weights
from pipeline_steps.tile_pruning import model_prunable_weights
from pruning_fixtures import random_batches, tiny_bert


def _mean(weights, plan):
    sizes = {}
    for w in weights:
        sizes[(w.layer, w.kind)] = sizes.get((w.layer, w.kind), 0) + w.shape[0] * w.shape[1]
    return sum(plan[k] * n for k, n in sizes.items()) / sum(sizes.values())


def test_allocation_meets_the_target_and_follows_kind_multipliers():
    weights = model_prunable_weights(tiny_bert())
    plan = allocate(weights, 0.6, {"qkv": 1.0, "attn_output": 0.5, "ffn": 1.2})
    assert _mean(weights, plan) == pytest.approx(0.6, abs=1e-9)
    assert plan[(0, "attn_output")] / plan[(0, "qkv")] == pytest.approx(0.5)
    assert plan[(1, "ffn")] / plan[(1, "qkv")] == pytest.approx(1.2)
    dense = allocate(weights, 0.4, {"qkv": 0.0, "attn_output": 1.0, "ffn": 1.0})
    assert dense[(0, "qkv")] == 0.0 and _mean(weights, dense) == pytest.approx(0.4)


def test_allocation_caps_pools_and_rejects_unreachable_targets():
    weights = model_prunable_weights(tiny_bert())
    plan = allocate(weights, 0.9, {"qkv": 1.0, "attn_output": 1.0, "ffn": 3.0})
    assert max(plan.values()) <= MAX_POOL_SPARSITY and _mean(weights, plan) == pytest.approx(0.9)
    with pytest.raises(ValueError, match="prune.kinds"):
        allocate(weights, 0.8, {"qkv": 0.0, "attn_output": 0.0, "ffn": 1.0})
    with pytest.raises(ValueError, match="unknown kinds"):
        allocate(weights, 0.5, {"mlp": 1.0})


def test_sensitive_layers_get_less_sparsity():
    weights = model_prunable_weights(tiny_bert())
    lw = layer_weights({0: 4.0, 1: 0.25}, power=0.5)
    assert lw[0] < 1.0 < lw[1] and np.mean(list(lw.values())) == pytest.approx(1.0)
    plan = allocate(weights, 0.5, {"qkv": 1, "attn_output": 1, "ffn": 1}, lw)
    assert plan[(0, "ffn")] < 0.5 < plan[(1, "ffn")]
    assert _mean(weights, plan) == pytest.approx(0.5)
    flat = layer_weights({0: 1.0, 1: 1.0}, power=0.5)
    assert flat == {0: pytest.approx(1.0), 1: pytest.approx(1.0)}


def test_layer_sensitivity_restores_the_weights_exactly():
    model = tiny_bert()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    sens = layer_sensitivity(model, random_batches(), 0.8, (16, 16), torch.device("cpu"))
    assert sorted(sens) == [0, 1] and all(v >= 0 for v in sens.values())
    assert any(v > 0 for v in sens.values())
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    with pytest.raises(ValueError, match="no dev batches"):
        layer_sensitivity(model, [], 0.5, (16, 16), torch.device("cpu"))


def test_head_importance_is_zero_for_a_head_with_no_output_path():
    model = tiny_bert()
    with torch.no_grad():
        model.bert.encoder.layer[1].attention.output.dense.weight[:, 16:32] = 0.0  # head 1 of layer 1
    imp = head_importance(model, random_batches(), torch.device("cpu"))
    assert imp.shape == (2, 4)
    assert imp[1, 1] == 0.0 and (imp[1, [0, 2, 3]] > 0).all() and (imp[0] > 0).all()
    assert not any(h for layer in model.bert.encoder.layer for h in layer.attention.output.dense._forward_pre_hooks)


def test_sensitivity_cap_bounds_every_pool():
    from pipeline_steps.sensitivity import sensitivity_cap

    weights = model_prunable_weights(tiny_bert())
    cap = sensitivity_cap(0.5, 0.3)
    assert cap == pytest.approx(0.65)
    plan = allocate(weights, 0.5, {"qkv": 1, "attn_output": 1, "ffn": 1}, {0: 0.1, 1: 10.0}, cap)
    assert max(plan.values()) == pytest.approx(0.65) and _mean(weights, plan) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="spread"):
        sensitivity_cap(0.5, 1.5)
