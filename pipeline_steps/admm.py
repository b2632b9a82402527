"""ADMM toward the tile-sparse set.

Splitting ``min loss(W) s.t. W in S`` (S: the tile-sparse, attention-structured set of the plan) as
``W = Z, Z in S``: the training loss gets ``rho/2 * ||W - Z + U||^2``; every ``update_every``
optimizer steps ``Z = proj_S(W + U)``, ``U += W - Z`` and ``rho *= rho_growth``. Hard pruning
afterwards keeps the support of the final projection.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from .tile_pruning import PrunableWeight, expand_tiles, fraction_below, remove_lowest, tile_energy

# maps {weight name: array} to {name: boolean element mask} (the projection's support; absent: all kept)
Support = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


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
        if rho <= 0 or rho_growth < 1 or update_every < 1:
            raise ValueError("admm: need rho > 0, rho_growth >= 1, update_every >= 1")
        params = dict(model.named_parameters())
        self.params = {w.name: params[w.name] for w in weights}
        self.support = support
        self.tile = tile
        self.rho = rho
        self.rho_growth = rho_growth
        self.update_every = update_every
        self.below_ratio = below_ratio
        self.U = {n: torch.zeros_like(p, requires_grad=False) for n, p in self.params.items()}
        self.Z = self.project({n: p.detach() for n, p in self.params.items()})

    @torch.no_grad()
    def project(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``proj_S(values)``: the values restricted to the support the plan selects for them."""
        masks = self.support({n: v.float().cpu().numpy() for n, v in values.items()})
        return {n: v * torch.from_numpy(masks[n]).to(device=v.device, dtype=v.dtype) if n in masks else v.clone()
                for n, v in values.items()}

    def extra_loss(self, model, batch, outputs) -> tuple[torch.Tensor, dict[str, float]]:  # noqa: ARG002
        """The ``train`` hook: ``rho/2 * sum ||W - Z + U||^2``."""
        total = sum((p - self.Z[n] + self.U[n]).pow(2).sum() for n, p in self.params.items())
        term = 0.5 * self.rho * total
        return term, {"prune.penalty": float(term.detach()), "prune.rho": self.rho}

    @torch.no_grad()
    def update(self) -> dict[str, float]:
        """``Z = proj(W + U)``, ``U += W - Z``, ``rho *= rho_growth``; returns the residuals."""
        self.Z = self.project({n: p.detach() + self.U[n] for n, p in self.params.items()})
        primal_sq, norm_sq = 0.0, 0.0
        for n, p in self.params.items():
            r = p.detach() - self.Z[n]
            self.U[n] += r
            primal_sq += float(r.pow(2).sum())
            norm_sq += float(p.detach().pow(2).sum())
        self.rho *= self.rho_growth
        return {"prune.admm_primal_residual": (primal_sq / max(norm_sq, 1e-30)) ** 0.5}

    def after_step(self, step: int) -> dict[str, float]:
        """The ``train`` hook: the ADMM update every ``update_every`` steps, and metrics to log."""
        logs = self.update() if step % self.update_every == 0 else {}
        logs["prune.frac_tiles_below_threshold"] = fraction_below(self.params, self.tile, self.below_ratio)
        return logs
