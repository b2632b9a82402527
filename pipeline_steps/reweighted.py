"""Re-weighted group lasso toward the plan's tile (and head) sparsity.

Groups ``g``: every tile of every encoder linear weight and (attention-aware) every head — its rows of
Wq/Wk/Wv and its columns of Wo. Norms are scale-free: a tile's norm is divided by the RMS tile norm of
its weight, a head's by the RMS head norm of its layer (``nu_g``), so one strength fits Q, V and FFN
alike. The penalty is ``penalty * sum_g alpha_g * nu_g``.

Every ``update_every`` optimizer steps the group weights are re-estimated from the current norms:
``alpha_g = 1 / (nu_g + eps)`` for the groups that the sparsity plan, applied to the current weights,
would remove, and 0 for the groups it would keep. So the penalty concentrates on what is about to be
pruned, pushes small groups harder as they shrink, and lets a group escape when the task gradient
makes it important again.

The penalty is minimised by a proximal step after every optimizer step (group soft-thresholding,
``W_g *= max(0, 1 - penalty * alpha_g / nu_g)``), decoupled from Adam's per-element scaling the way
AdamW decouples weight decay: in a few hundred fine-tuning steps at a small learning rate a penalty
gradient seen through Adam cannot move whole tiles to zero, the proximal step can.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from .head_pruning import AttentionLayer
from .tile_pruning import PrunableWeight, fraction_below, tile_energy
from .tiles import ModelMasks

_TINY = 1e-12
# the plan's selection applied to current weights at an optimizer step: ({name: array}, step) -> masks kept
Selector = Callable[[dict[str, np.ndarray], int], ModelMasks]


class ReweightedGroupLasso:
    """Group weights, penalty value and proximal step of the re-weighted group lasso on one model."""

    def __init__(self, model: torch.nn.Module, weights: list[PrunableWeight], tile: tuple[int, int], *,
                 penalty: float, eps: float, update_every: int, select: Selector | None = None,
                 heads: list[AttentionLayer] | None = None, below_ratio: float = 0.1) -> None:
        if penalty < 0 or eps <= 0 or update_every < 1:
            raise ValueError("reweighted: need penalty >= 0, eps > 0, update_every >= 1")
        params = dict(model.named_parameters())
        self.params = {w.name: params[w.name] for w in weights}
        self.tile = tile
        self.penalty_weight = penalty
        self.eps = eps
        self.update_every = update_every
        self.select = select
        self.heads = heads or []
        self.below_ratio = below_ratio
        with torch.no_grad():
            self.tile_scale = {n: float(tile_energy(p, tile).mean().sqrt()) or 1.0 for n, p in self.params.items()}
            self.head_scale = {att.layer: float(self._head_norms(att).pow(2).mean().sqrt()) or 1.0
                               for att in self.heads}
        self.alpha_tiles: dict[str, torch.Tensor] = {}
        self.alpha_heads: dict[int, torch.Tensor] = {}
        self.update_weights(0)

    def _head_parts(self, att: AttentionLayer) -> list[tuple[torch.Tensor, int]]:
        return [(self.params[att.query.name], 0), (self.params[att.key.name], 0),
                (self.params[att.value.name], 0), (self.params[att.output.name], 1)]

    @torch.no_grad()
    def _head_norms(self, att: AttentionLayer) -> torch.Tensor:
        sq = 0.0
        for p, axis in self._head_parts(att):
            w = p.detach().float()
            per_head = w.reshape(att.num_heads, -1) if axis == 0 else w.t().reshape(att.num_heads, -1)
            sq = sq + per_head.pow(2).sum(dim=1)
        return sq.sqrt()

    @torch.no_grad()
    def tile_norms(self) -> dict[str, torch.Tensor]:
        """Scale-free norm ``nu_g`` of every tile group, per weight."""
        return {n: tile_energy(p, self.tile).sqrt() / self.tile_scale[n] for n, p in self.params.items()}

    @torch.no_grad()
    def head_norms(self, att: AttentionLayer) -> torch.Tensor:
        """Scale-free norm ``nu_g`` of every head group of one layer: ``[heads]``."""
        return self._head_norms(att) / self.head_scale[att.layer]

    @torch.no_grad()
    def update_weights(self, step: int = 0) -> None:
        """Re-estimate ``alpha_g``: ``1 / (nu_g + eps)`` where the plan removes the group at ``step``, else 0."""
        masks = None
        if self.select is not None:
            masks = self.select({n: p.detach().float().cpu().numpy() for n, p in self.params.items()}, step)
        self.alpha_tiles = {}
        for name, nu in self.tile_norms().items():
            alpha = 1.0 / (nu + self.eps)
            if masks is not None and name in masks.layouts:
                keep = torch.from_numpy(masks.layouts[name].tile_mask()).to(alpha.device)
                alpha = alpha.masked_fill(keep, 0.0)
            self.alpha_tiles[name] = alpha
        self.alpha_heads = {}
        for att in self.heads:
            alpha = 1.0 / (self.head_norms(att) + self.eps)
            if masks is not None:
                removed = torch.zeros_like(alpha, dtype=torch.bool)
                removed[masks.pruned_heads.get(att.layer, [])] = True
                alpha = alpha.masked_fill(~removed, 0.0)
            self.alpha_heads[att.layer] = alpha

    @torch.no_grad()
    def penalty(self) -> float:
        """Current value of ``penalty * sum_g alpha_g * nu_g``."""
        total = sum((self.alpha_tiles[n] * nu).sum() for n, nu in self.tile_norms().items())
        total = total + sum((self.alpha_heads[att.layer] * self.head_norms(att)).sum() for att in self.heads)
        return self.penalty_weight * float(total)

    @torch.no_grad()
    def prox_step(self) -> None:
        """Group soft-thresholding: ``W_g *= max(0, 1 - penalty * alpha_g / nu_g)``."""
        lam = self.penalty_weight
        for name, nu in self.tile_norms().items():
            p = self.params[name]
            factor = (1.0 - lam * self.alpha_tiles[name] / nu.clamp_min(_TINY)).clamp_min(0.0).to(p.dtype)
            gr, gc = factor.shape
            p.view(gr, self.tile[0], gc, self.tile[1]).mul_(factor[:, None, :, None])
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
            self.update_weights(step)
            logs["prune.reweight_update"] = float(step)
        logs["prune.penalty"] = self.penalty()
        logs["prune.frac_tiles_below_threshold"] = fraction_below(self.params, self.tile, self.below_ratio)
        return logs
