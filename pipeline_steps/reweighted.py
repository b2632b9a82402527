"""Re-weighted group lasso toward tile (and head) sparsity.

Objective: task loss + ``penalty * sum_g alpha_g * ||W_g||`` over the groups ``g`` = every tile of
every encoder linear weight, plus (attention-aware) every head: its rows of Wq/Wk/Wv and columns of
Wo. The group weights ``alpha_g = 1 / (||W_g|| + eps)`` are re-estimated from the current norms every
``update_every`` steps, so the penalty approximates the number of non-zero groups and pushes small
groups harder. The penalty is minimised by a proximal step after every optimizer step (group
soft-thresholding with step size ``step_size``), decoupled from Adam's per-element scaling the same
way AdamW decouples weight decay; groups that reach zero stay exactly zero until re-grown by the task
gradient.
"""

from __future__ import annotations

import torch

from .head_pruning import AttentionLayer
from .tile_pruning import PrunableWeight, expand_tiles, fraction_below, tile_energy

_TINY = 1e-12


class ReweightedGroupLasso:
    """Group weights, penalty value and proximal step of the re-weighted group lasso on one model."""

    def __init__(self, model: torch.nn.Module, weights: list[PrunableWeight], tile: tuple[int, int], *,
                 penalty: float, eps: float, update_every: int, step_size: float,
                 heads: list[AttentionLayer] | None = None, below_ratio: float = 0.1) -> None:
        if penalty < 0 or eps <= 0 or update_every < 1 or step_size <= 0:
            raise ValueError("reweighted: need penalty >= 0, eps > 0, update_every >= 1, step_size > 0")
        params = dict(model.named_parameters())
        self.params = {w.name: params[w.name] for w in weights}
        self.tile = tile
        self.penalty_weight = penalty
        self.eps = eps
        self.update_every = update_every
        self.step_size = step_size
        self.heads = heads or []
        self.below_ratio = below_ratio
        self.alpha_tiles: dict[str, torch.Tensor] = {}
        self.alpha_heads: dict[int, torch.Tensor] = {}
        self.update_weights()

    @torch.no_grad()
    def tile_norms(self) -> dict[str, torch.Tensor]:
        """Current norm of every tile group, per weight."""
        return {name: tile_energy(p, self.tile).sqrt() for name, p in self.params.items()}

    def _head_parts(self, att: AttentionLayer) -> list[tuple[torch.Tensor, int]]:
        return [(self.params[att.query.name], 0), (self.params[att.key.name], 0),
                (self.params[att.value.name], 0), (self.params[att.output.name], 1)]

    @torch.no_grad()
    def head_norms(self, att: AttentionLayer) -> torch.Tensor:
        """Current norm of every head group of one layer: ``[heads]``."""
        sq = 0.0
        for p, axis in self._head_parts(att):
            w = p.detach().float()
            per_head = w.reshape(att.num_heads, -1) if axis == 0 else w.t().reshape(att.num_heads, -1)
            sq = sq + per_head.pow(2).sum(dim=1)
        return sq.sqrt()

    @torch.no_grad()
    def update_weights(self) -> None:
        """Re-estimate ``alpha_g = 1 / (||W_g|| + eps)`` from the current group norms."""
        self.alpha_tiles = {name: 1.0 / (n + self.eps) for name, n in self.tile_norms().items()}
        self.alpha_heads = {att.layer: 1.0 / (self.head_norms(att) + self.eps) for att in self.heads}

    @torch.no_grad()
    def penalty(self) -> float:
        """Current value of ``penalty * sum_g alpha_g ||W_g||``."""
        total = sum((self.alpha_tiles[n] * norm).sum() for n, norm in self.tile_norms().items())
        total = total + sum((self.alpha_heads[att.layer] * self.head_norms(att)).sum() for att in self.heads)
        return self.penalty_weight * float(total)

    @torch.no_grad()
    def prox_step(self) -> None:
        """Group soft-thresholding: ``W_g *= max(0, 1 - step * penalty * alpha_g / ||W_g||)``."""
        lam = self.step_size * self.penalty_weight
        for name, p in self.params.items():
            norms = tile_energy(p, self.tile).sqrt()
            factor = (1.0 - lam * self.alpha_tiles[name] / norms.clamp_min(_TINY)).clamp_min(0.0)
            p.mul_(expand_tiles(factor, self.tile).to(p.dtype))
        for att in self.heads:
            factor = (1.0 - lam * self.alpha_heads[att.layer] / self.head_norms(att).clamp_min(_TINY)).clamp_min(0.0)
            per_dim = factor.repeat_interleave(att.head_dim)
            for p, axis in self._head_parts(att):
                p.mul_((per_dim[:, None] if axis == 0 else per_dim[None, :]).to(p.dtype))

    def after_step(self, step: int) -> dict[str, float]:
        """The ``train`` hook: proximal step, periodic re-weighting, and metrics to log."""
        self.prox_step()
        logs = {}
        if step % self.update_every == 0:
            self.update_weights()
            logs["prune.reweight_update"] = float(step)
        logs["prune.penalty"] = self.penalty()
        logs["prune.frac_tiles_below_threshold"] = fraction_below(self.params, self.tile, self.below_ratio)
        return logs
