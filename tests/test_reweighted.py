"""Re-weighted group lasso: the re-weighting update, its schedule, the proximal step and the penalty."""

from __future__ import annotations

import pytest
import torch

from pipeline_steps import modeling
from pipeline_steps.head_pruning import attention_layers
from pipeline_steps.reweighted import ReweightedGroupLasso
from pipeline_steps.tile_pruning import model_prunable_weights, tile_norms
from pruning_fixtures import random_batches, tiny_bert

TILE = (16, 16)


def _rgl(model, heads=False, **kw):
    weights = model_prunable_weights(model)
    args = dict(penalty=0.5, eps=1e-3, update_every=3, step_size=0.01)
    args.update(kw)
    return ReweightedGroupLasso(model, weights, TILE, heads=attention_layers(weights, 4) if heads else None, **args)


def test_group_weights_are_inverse_norms_and_update_only_every_n_steps():
    model = tiny_bert()
    rgl = _rgl(model, heads=True)
    params = dict(model.named_parameters())
    name = "bert.encoder.layer.0.intermediate.dense.weight"
    assert torch.allclose(rgl.alpha_tiles[name], 1.0 / (tile_norms(params[name].detach(), TILE) + 1e-3))
    w = params["bert.encoder.layer.1.attention.self.query.weight"].detach()
    o = params["bert.encoder.layer.1.attention.output.dense.weight"].detach()
    k = params["bert.encoder.layer.1.attention.self.key.weight"].detach()
    v = params["bert.encoder.layer.1.attention.self.value.weight"].detach()
    head2 = (w[32:48].pow(2).sum() + k[32:48].pow(2).sum() + v[32:48].pow(2).sum() + o[:, 32:48].pow(2).sum()).sqrt()
    assert float(rgl.alpha_heads[1][2]) == pytest.approx(1.0 / (float(head2) + 1e-3), rel=1e-5)
    alpha0 = rgl.alpha_tiles[name].clone()
    logs1 = rgl.after_step(1)
    assert torch.equal(rgl.alpha_tiles[name], alpha0) and "prune.reweight_update" not in logs1
    rgl.after_step(2)
    logs3 = rgl.after_step(3)
    assert logs3["prune.reweight_update"] == 3.0
    expected = 1.0 / (tile_norms(params[name].detach(), TILE) + 1e-3)
    assert torch.allclose(rgl.alpha_tiles[name], expected) and not torch.allclose(expected, alpha0)


def test_proximal_step_is_group_soft_thresholding():
    model = tiny_bert()
    name = "bert.encoder.layer.0.attention.self.value.weight"
    p = dict(model.named_parameters())[name]
    with torch.no_grad():
        p[:16, :16].mul_(1e-3)  # one tiny tile: it must go to exactly zero
    rgl = _rgl(model, penalty=0.5, step_size=0.01)
    before = p.detach().clone()
    norms = tile_norms(before, TILE)
    lam = 0.5 * 0.01 * rgl.alpha_tiles[name]
    rgl.prox_step()
    assert torch.all(p.detach()[:16, :16] == 0)
    factor = (1 - lam[1, 1] / norms[1, 1]).clamp_min(0)
    assert torch.allclose(p.detach()[16:32, 16:32], before[16:32, 16:32] * factor)
    assert float(tile_norms(p.detach(), TILE)[1, 1]) == pytest.approx(max(float(norms[1, 1] - lam[1, 1]), 0.0),
                                                                      rel=1e-4)


def test_penalty_counts_nonzero_groups_after_reweighting():
    model = tiny_bert()
    rgl = _rgl(model, penalty=2.0, eps=1e-9)
    n_tiles = sum(a.numel() for a in rgl.alpha_tiles.values())
    assert rgl.penalty() == pytest.approx(2.0 * n_tiles, rel=1e-4)
    name = "bert.encoder.layer.1.output.dense.weight"
    with torch.no_grad():
        dict(model.named_parameters())[name][:16, :32] = 0.0  # two tiles
    rgl.update_weights()
    assert rgl.penalty() == pytest.approx(2.0 * (n_tiles - 2), rel=1e-4)


def test_training_with_the_penalty_drives_tiles_to_zero():
    model = tiny_bert()
    rgl = _rgl(model, heads=True, penalty=1.0, step_size=1e-2, update_every=2)
    start = rgl.after_step(0)["prune.frac_tiles_below_threshold"]
    logs = []
    modeling.train(model, random_batches(n_batches=4), epochs=3, learning_rate=1e-3, weight_decay=0.0,
                   warmup_ratio=0.0, device=torch.device("cpu"), after_step=lambda s: logs.append(rgl.after_step(s)))
    assert logs[-1]["prune.frac_tiles_below_threshold"] > start
    assert logs[-1]["prune.penalty"] < logs[0]["prune.penalty"]


def test_bad_hyper_parameters_are_rejected():
    with pytest.raises(ValueError, match="eps > 0"):
        _rgl(tiny_bert(), eps=0.0)
