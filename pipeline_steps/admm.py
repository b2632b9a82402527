"""ADMM toward the tile-sparse set.

Splitting ``min loss(W) s.t. W in S`` (S: the tile-sparse, attention-structured set of the plan) as
``W = Z, Z in S`` with the augmented term ``rho/2 * ||W - Z + U||^2`` (scaled dual ``U``):

- W-update, linearised: after every optimizer step on the task loss, one gradient step of unit size on
  the augmented term, ``W -= rho * (W - Z + U)`` (decoupled from Adam's per-element scaling, which would
  otherwise cap the pull at the learning rate per step);
- every ``update_every`` optimizer steps: ``Z = proj_S(W + U)``, ``U += W - Z``, ``rho *= rho_growth``
  (capped at 1).

Hard pruning afterwards keeps the plan's support of the final weights.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from .tile_pruning import PrunableWeight, expand_tiles, fraction_below, remove_lowest, tile_energy

# ({weight name: array}, optimizer step) -> {name: boolean element mask}: the projection's support at that
# step (absent names: all kept); the step lets the sparse set tighten over training
Support = Callable[[dict[str, np.ndarray], int], dict[str, np.ndarray]]


def project_tile_sparse(x: torch.Tensor, tile: tuple[int, int], n_remove: int, seed: int = 0) -> torch.Tensor:
    """Euclidean projection of ``x`` onto the matrices with at most ``n_tiles - n_remove`` non-zero tiles.

    Keeping the tiles of largest energy minimises ``||x - z||``, since the distance is the energy of
    the dropped tiles.
    """
    energy = tile_energy(x, tile)
    keep = remove_lowest(energy.cpu(), torch.ones_like(energy, dtype=torch.bool, device="cpu"), n_remove, seed)
    return x * expand_tiles(keep.to(x.device), tile).to(x.dtype)


class ADMM:
    """Auxiliary ``Z``, dual ``U`` and penalty ``rho`` for the prunable weights of one model."""

    def __init__(self, model: torch.nn.Module, weights: list[PrunableWeight], support: Support, tile: tuple[int, int],
                 *, rho: float, rho_growth: float, update_every: int, below_ratio: float = 0.1) -> None:
        if not 0 < rho <= 1 or rho_growth < 1 or update_every < 1:
            raise ValueError("admm: need 0 < rho <= 1, rho_growth >= 1, update_every >= 1")
        params = dict(model.named_parameters())
        self.params = {w.name: params[w.name] for w in weights}
        self.support = support
        self.tile = tile
        self.rho = rho
        self.rho_growth = rho_growth
        self.update_every = update_every
        self.below_ratio = below_ratio
        self.U = {n: torch.zeros_like(p, requires_grad=False) for n, p in self.params.items()}
        self.Z = self.project({n: p.detach() for n, p in self.params.items()}, 0)

    @torch.no_grad()
    def project(self, values: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        """``proj_S(values)``: the values restricted to the support the plan selects for them at ``step``."""
        masks = self.support({n: v.float().cpu().numpy() for n, v in values.items()}, step)
        return {n: v * torch.from_numpy(masks[n]).to(device=v.device, dtype=v.dtype) if n in masks else v.clone()
                for n, v in values.items()}

    @torch.no_grad()
    def penalty(self) -> float:
        """Current value of ``rho/2 * sum ||W - Z + U||^2``."""
        total = sum((p.detach() - self.Z[n] + self.U[n]).pow(2).sum() for n, p in self.params.items())
        return 0.5 * self.rho * float(total)

    @torch.no_grad()
    def pull(self) -> None:
        """The linearised W-update: ``W -= rho * (W - Z + U)``."""
        for n, p in self.params.items():
            p.sub_(self.rho * (p.detach() - self.Z[n] + self.U[n]))

    @torch.no_grad()
    def update(self, step: int) -> dict[str, float]:
        """``Z = proj(W + U)``, ``U += W - Z``, ``rho *= rho_growth``; returns the residuals."""
        self.Z = self.project({n: p.detach() + self.U[n] for n, p in self.params.items()}, step)
        primal_sq, norm_sq = 0.0, 0.0
        for n, p in self.params.items():
            r = p.detach() - self.Z[n]
            self.U[n] += r
            primal_sq += float(r.pow(2).sum())
            norm_sq += float(p.detach().pow(2).sum())
        self.rho = min(1.0, self.rho * self.rho_growth)
        return {"prune.admm_primal_residual": (primal_sq / max(norm_sq, 1e-30)) ** 0.5}

    def after_step(self, step: int) -> dict[str, float]:
        """The ``train`` hook: the W pull, the Z/U/rho update every ``update_every`` steps, metrics to log."""
        self.pull()
        logs = self.update(step) if step % self.update_every == 0 else {}
        logs["prune.penalty"] = self.penalty()
        logs["prune.rho"] = self.rho
        logs["prune.frac_tiles_below_threshold"] = fraction_below(self.params, self.tile, self.below_ratio)
        return logs
