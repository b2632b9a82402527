"""ADMM: the tile-sparse projection is the Euclidean one; Z/U/rho updates follow the definitions."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from pipeline_steps import modeling
from pipeline_steps.admm import ADMM, project_tile_sparse
from pipeline_steps.mask_selection import SparsityPlan, select_masks
from pipeline_steps.masking import element_masks_np
from pipeline_steps.sensitivity import allocate
from pipeline_steps.tile_pruning import model_prunable_weights, tile_energy
from pruning_fixtures import random_batches, tiny_bert


def _brute_force(x: torch.Tensor, tile, n_keep: int) -> float:
    energy = tile_energy(x, tile).reshape(-1)
    best = min(float(energy.sum() - energy[list(c)].sum()) for c in itertools.combinations(range(energy.numel()), n_keep))
    return best ** 0.5


@pytest.mark.parametrize("n_remove", [0, 1, 3, 5, 6])
def test_projection_is_the_nearest_tile_sparse_matrix(n_remove):
    torch.manual_seed(n_remove)
    x = torch.randn(4, 6)
    z = project_tile_sparse(x, (2, 2), n_remove)
    assert int((tile_energy(z, (2, 2)) > 0).sum()) == 6 - n_remove
    assert float((x - z).norm()) == pytest.approx(_brute_force(x, (2, 2), 6 - n_remove), rel=1e-6)
    assert torch.equal(project_tile_sparse(z, (2, 2), n_remove), z)  # idempotent
    kept = z != 0
    assert torch.equal(z[kept], x[kept])  # kept tiles unchanged


def _admm(model, rho=0.1, growth=2.0, every=2):
    weights = model_prunable_weights(model)
    plan = SparsityPlan(0.5, allocate(weights, 0.5, {"qkv": 1, "attn_output": 1, "ffn": 1}), (16, 16), 0)

    def support(arrays, step):
        return element_masks_np(weights, 4, select_masks(arrays, weights, 4, plan))

    return ADMM(model, weights, support, (16, 16), rho=rho, rho_growth=growth, update_every=every), weights, support


def test_z_starts_as_the_projection_and_the_pull_is_a_unit_gradient_step():
    model = tiny_bert()
    admm, weights, support = _admm(model)
    params = dict(model.named_parameters())
    masks = support({w.name: params[w.name].detach().numpy() for w in weights}, 0)
    for w in weights:
        z = admm.Z[w.name]
        mask = torch.from_numpy(masks[w.name])
        assert torch.equal(z, params[w.name].detach() * mask)
        if w.kind == "ffn":  # no attention rule: exactly the kept tiles
            n_tiles = tile_energy(z, (16, 16)).numel()
            assert int((tile_energy(z, (16, 16)) > 0).sum()) == n_tiles - round(0.5 * n_tiles)
    expected = 0.5 * 0.1 * sum(float((params[w.name].detach() - admm.Z[w.name]).pow(2).sum()) for w in weights)
    assert admm.penalty() == pytest.approx(expected, rel=1e-5)
    # the pull is W -= rho * grad of (1/2)||W - Z + U||^2
    w0 = weights[0].name
    w = params[w0].detach().clone().requires_grad_(True)
    (0.5 * (w - admm.Z[w0] + admm.U[w0]).pow(2).sum()).backward()
    admm.pull()
    assert torch.allclose(params[w0].detach(), w.detach() - 0.1 * w.grad, atol=1e-7)
    logs = admm.after_step(1)
    assert logs["prune.rho"] == 0.1 and "prune.penalty" in logs


def test_z_u_updates_happen_every_n_steps_and_rho_is_capped():
    admm, _, _ = _admm(tiny_bert(), rho=0.4, growth=2.0, every=2)
    assert "prune.admm_primal_residual" not in admm.after_step(1)
    assert "prune.admm_primal_residual" in admm.after_step(2) and admm.rho == pytest.approx(0.8)
    admm.after_step(4)
    assert admm.rho == 1.0


def test_bad_rho_is_rejected():
    with pytest.raises(ValueError, match="rho"):
        _admm(tiny_bert(), rho=1.5)


def test_update_projects_w_plus_u_accumulates_the_dual_and_grows_rho():
    model = tiny_bert()
    admm, weights, _ = _admm(model, rho=0.1, growth=2.0, every=2)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for w in weights:
            admm.U[w.name].normal_(0.0, 0.01)
    u_old = {n: u.clone() for n, u in admm.U.items()}
    w_plus_u = {n: params[n].detach() + u_old[n] for n in u_old}
    expected_z = admm.project(w_plus_u, 2)
    logs = admm.update(2)
    assert admm.rho == pytest.approx(0.2) and logs["prune.admm_primal_residual"] > 0
    for n in u_old:
        assert torch.equal(admm.Z[n], expected_z[n])
        assert torch.allclose(admm.U[n], u_old[n] + params[n].detach() - expected_z[n])


def test_admm_training_pulls_w_toward_the_sparse_set():
    model = tiny_bert()
    admm, weights, _ = _admm(model, rho=0.1, growth=1.5, every=2)
    params = dict(model.named_parameters())

    def distance() -> float:
        z = admm.project({w.name: params[w.name].detach() for w in weights}, 0)
        return sum(float((params[n].detach() - z[n]).pow(2).sum()) for n in z) ** 0.5

    before = distance()
    modeling.train(model, random_batches(n_batches=4), epochs=3, learning_rate=3e-3, weight_decay=0.0,
                   warmup_ratio=0.0, device=torch.device("cpu"), after_step=admm.after_step)
    assert distance() < 0.7 * before
