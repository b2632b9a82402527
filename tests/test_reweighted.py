"""Re-weighted group lasso: the re-weighting update, its schedule, the proximal step and the penalty."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline_steps import modeling
from pipeline_steps.head_pruning import attention_layers
from pipeline_steps.reweighted import ReweightedGroupLasso
from pipeline_steps.mask_selection import SparsityPlan, select_masks
from pipeline_steps.sensitivity import allocate
from pipeline_steps.tile_pruning import model_prunable_weights, tile_energy, tile_norms
from pruning_fixtures import random_batches, tiny_bert

TILE = (16, 16)


def _rgl(model, heads=False, **kw):
    weights = model_prunable_weights(model)
    args = dict(penalty=0.005, eps=1e-3, update_every=3)
    args.update(kw)
    return ReweightedGroupLasso(model, weights, TILE, heads=attention_layers(weights, 4) if heads else None, **args)


def _scale(p):
    return float(tile_energy(p.detach(), TILE).mean().sqrt())


def test_group_weights_are_inverse_norms_and_update_only_every_n_steps():
    model = tiny_bert()
    rgl = _rgl(model, heads=True)
    params = dict(model.named_parameters())
    name = "bert.encoder.layer.0.intermediate.dense.weight"
    scale = _scale(params[name])
    assert torch.allclose(rgl.alpha_tiles[name], 1.0 / (tile_norms(params[name].detach(), TILE) / scale + 1e-3))
    w = params["bert.encoder.layer.1.attention.self.query.weight"].detach()
    o = params["bert.encoder.layer.1.attention.output.dense.weight"].detach()
    k = params["bert.encoder.layer.1.attention.self.key.weight"].detach()
    v = params["bert.encoder.layer.1.attention.self.value.weight"].detach()
    heads = torch.stack([(w[i:i + 16].pow(2).sum() + k[i:i + 16].pow(2).sum() + v[i:i + 16].pow(2).sum()
                          + o[:, i:i + 16].pow(2).sum()).sqrt() for i in range(0, 64, 16)])
    nu2 = float(heads[2] / heads.pow(2).mean().sqrt())
    assert float(rgl.alpha_heads[1][2]) == pytest.approx(1.0 / (nu2 + 1e-3), rel=1e-5)
    alpha0 = rgl.alpha_tiles[name].clone()
    logs1 = rgl.after_step(1)
    assert torch.equal(rgl.alpha_tiles[name], alpha0) and "prune.reweight_update" not in logs1
    rgl.after_step(2)
    logs3 = rgl.after_step(3)
    assert logs3["prune.reweight_update"] == 3.0
    expected = 1.0 / (tile_norms(params[name].detach(), TILE) / scale + 1e-3)
    assert torch.allclose(rgl.alpha_tiles[name], expected) and not torch.allclose(expected, alpha0)


def test_proximal_step_is_group_soft_thresholding():
    model = tiny_bert()
    name = "bert.encoder.layer.0.attention.self.value.weight"
    p = dict(model.named_parameters())[name]
    with torch.no_grad():
        p[:16, :16].mul_(1e-3)  # one tiny tile: it must go to exactly zero
    rgl = _rgl(model, penalty=0.05)
    before = p.detach().clone()
    nu = tile_norms(before, TILE) / rgl.tile_scale[name]
    shrink = 0.05 * rgl.alpha_tiles[name]
    rgl.prox_step()
    assert torch.all(p.detach()[:16, :16] == 0)
    factor = (1 - shrink[1, 1] / nu[1, 1]).clamp_min(0)
    assert torch.allclose(p.detach()[16:32, 16:32], before[16:32, 16:32] * factor)
    nu_after = float(tile_norms(p.detach(), TILE)[1, 1]) / rgl.tile_scale[name]
    assert nu_after == pytest.approx(max(float(nu[1, 1] - shrink[1, 1]), 0.0), rel=1e-4)


def test_only_groups_the_plan_removes_are_penalised():
    model = tiny_bert()
    weights = model_prunable_weights(model)
    plan = SparsityPlan(0.5, allocate(weights, 0.5, {"qkv": 1, "attn_output": 1, "ffn": 1}), TILE, 0,
                        np.array([[3.0, 0.1, 2.0, 1.0], [0.2, 5.0, 4.0, 3.0]]), 0.5)
    chosen = []

    def select(arrays, step):
        chosen.append(select_masks(arrays, weights, 4, plan))
        return chosen[-1]

    rgl = ReweightedGroupLasso(model, weights, TILE, penalty=0.01, eps=1e-3, update_every=5, select=select,
                               heads=attention_layers(weights, 4))
    masks = chosen[-1]
    for name, alpha in rgl.alpha_tiles.items():
        keep = torch.from_numpy(masks.layouts[name].tile_mask())
        assert torch.all(alpha[keep] == 0) and torch.all(alpha[~keep] > 0)
    for layer, alpha in rgl.alpha_heads.items():
        removed = masks.pruned_heads.get(layer, [])
        assert all((alpha[h] > 0) == (h in removed) for h in range(4))
    tiles_only = ReweightedGroupLasso(model, weights, TILE, penalty=0.01, eps=1e-3, update_every=5, select=select)
    masks = chosen[-1]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    tiles_only.prox_step()
    params = dict(model.named_parameters())
    for name in tiles_only.alpha_tiles:  # kept tiles untouched, removed tiles shrunk
        keep = torch.from_numpy(masks.layouts[name].dense_mask())
        after = params[name].detach()
        assert torch.equal(after[keep], before[name][keep])
        assert torch.all(after[~keep].abs() < before[name][~keep].abs() + 1e-12)


def test_penalty_counts_nonzero_groups_after_reweighting():
    model = tiny_bert()
    rgl = _rgl(model, penalty=2.0, eps=1e-9)
    n_tiles = sum(a.numel() for a in rgl.alpha_tiles.values())
    assert rgl.penalty() == pytest.approx(2.0 * n_tiles, rel=1e-4)  # no plan: every group is penalised
    name = "bert.encoder.layer.1.output.dense.weight"
    with torch.no_grad():
        dict(model.named_parameters())[name][:16, :32] = 0.0  # two tiles
    rgl.update_weights()
    assert rgl.penalty() == pytest.approx(2.0 * (n_tiles - 2), rel=1e-4)


def test_training_with_the_penalty_drives_tiles_to_zero():
    model = tiny_bert()
    rgl = _rgl(model, heads=True, penalty=0.05, update_every=2)
    start = rgl.after_step(0)["prune.frac_tiles_below_threshold"]
    logs = []
    modeling.train(model, random_batches(n_batches=4), epochs=3, learning_rate=1e-3, weight_decay=0.0,
                   warmup_ratio=0.0, device=torch.device("cpu"), after_step=lambda s: logs.append(rgl.after_step(s)))
    assert logs[-1]["prune.frac_tiles_below_threshold"] > start
    assert logs[-1]["prune.penalty"] < logs[0]["prune.penalty"]


def test_bad_hyper_parameters_are_rejected():
    with pytest.raises(ValueError, match="eps > 0"):
        _rgl(tiny_bert(), eps=0.0)
