"""Tensor-tile pruning primitives: which weights are prunable, tile norms, top-k tile selection,
exact count splitting, and tile layouts read back from a model.

A prunable weight is one of the six linear weights of an encoder layer (Q, K, V, attention output,
FFN1, FFN2); the pooler and the classifier stay dense. Counts of removed tiles are integers chosen so
that a target ratio is met within one tile; ties between equal tile norms are broken by a seeded
permutation, so masks are reproducible from the seed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from .tiles import ModelMasks, TileLayout

# module path inside an encoder layer -> (role, kind); kind is the config key of prune.kinds
ROLES: dict[str, tuple[str, str]] = {
    "attention.self.query": ("query", "qkv"),
    "attention.self.key": ("key", "qkv"),
    "attention.self.value": ("value", "qkv"),
    "attention.output.dense": ("attn_output", "attn_output"),
    "intermediate.dense": ("ffn_in", "ffn"),
    "output.dense": ("ffn_out", "ffn"),
}
KINDS = ("qkv", "attn_output", "ffn")
_NAME = re.compile(r"^(?P<prefix>(?:.*\.)?encoder\.layer\.)(?P<layer>\d+)\.(?P<module>" +
                   "|".join(re.escape(m) for m in ROLES) + r")\.weight$")


@dataclass(frozen=True)
class PrunableWeight:
    """One encoder linear weight: its state-dict name, layer, role, kind and ``(out, in)`` shape."""

    name: str
    layer: int
    role: str
    kind: str
    shape: tuple[int, int]

    @property
    def bias_name(self) -> str:
        """State-dict name of the matching bias."""
        return self.name[: -len("weight")] + "bias"


def prunable_weights(named_shapes: dict[str, tuple[int, ...]]) -> list[PrunableWeight]:
    """The encoder linear weights among ``{name: shape}`` (e.g. a state dict's shapes), ordered by layer and role."""
    out = []
    order = {role: i for i, (role, _) in enumerate(ROLES.values())}
    for name, shape in named_shapes.items():
        m = _NAME.match(name)
        if m is None:
            continue
        role, kind = ROLES[m["module"]]
        if len(shape) != 2:
            raise ValueError(f"{name}: expected a 2-D linear weight, got shape {tuple(shape)}")
        out.append(PrunableWeight(name, int(m["layer"]), role, kind, (int(shape[0]), int(shape[1]))))
    if not out:
        raise ValueError("no encoder linear weights (…encoder.layer.N.attention.self.query.weight, …) found")
    return sorted(out, key=lambda w: (w.layer, order[w.role]))


def model_prunable_weights(model: torch.nn.Module) -> list[PrunableWeight]:
    """The prunable weights of a BERT model."""
    return prunable_weights({n: tuple(p.shape) for n, p in model.named_parameters()})


def check_tile(shape: tuple[int, int], tile: tuple[int, int], name: str) -> tuple[int, int]:
    """The tile grid of ``shape``; a clear error naming ``name`` when the tile does not divide it."""
    tr, tc = tile
    if tr <= 0 or tc <= 0 or shape[0] % tr or shape[1] % tc:
        raise ValueError(f"{name}: tile shape {tr}x{tc} does not divide weight shape {shape[0]}x{shape[1]} "
                         "(prune.tile)")
    return shape[0] // tr, shape[1] // tc


def tile_norms(weight: torch.Tensor, tile: tuple[int, int]) -> torch.Tensor:
    """Frobenius norm of every tile: a ``(rows // tr, cols // tc)`` tensor (differentiable)."""
    gr, gc = check_tile(tuple(weight.shape), tile, "weight")
    tr, tc = tile
    sq = weight.reshape(gr, tr, gc, tc).pow(2).sum(dim=(1, 3))
    return sq.clamp_min(1e-20).sqrt()


def tile_energy(weight: torch.Tensor, tile: tuple[int, int]) -> torch.Tensor:
    """Sum of squares of every tile (``tile_norms`` squared, exact at zero)."""
    gr, gc = check_tile(tuple(weight.shape), tile, "weight")
    tr, tc = tile
    return weight.detach().reshape(gr, tr, gc, tc).pow(2).sum(dim=(1, 3))


def removal_count(n_tiles: int, sparsity: float) -> int:
    """Number of tiles to remove so that the removed fraction is within half a tile of ``sparsity``."""
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    return int(round(sparsity * n_tiles))


def split_count(total: int, weights: list[float], capacities: list[int]) -> list[int]:
    """Split the integer ``total`` over slots in proportion to ``weights`` without exceeding ``capacities``.

    Largest-remainder rounding; what a full slot cannot take flows to the others, so the parts sum
    to ``total`` exactly (``total`` must not exceed the summed capacities).
    """
    if len(weights) != len(capacities):
        raise ValueError("split_count: weights and capacities differ in length")
    if total < 0 or total > sum(capacities):
        raise ValueError(f"split_count: cannot place {total} in capacities summing to {sum(capacities)}")
    parts = [0] * len(weights)
    left = total
    open_slots = [i for i, c in enumerate(capacities) if c > 0]
    while left > 0:
        w = np.array([max(weights[i], 0.0) for i in open_slots], dtype=np.float64)
        if w.sum() <= 0:
            w = np.array([float(capacities[i] - parts[i]) for i in open_slots])
        share = left * w / w.sum()
        base = np.floor(share).astype(np.int64)
        order = np.argsort(-(share - base), kind="stable")
        base[order[: left - int(base.sum())]] += 1
        for j, i in enumerate(open_slots):
            take = min(int(base[j]), capacities[i] - parts[i])
            parts[i] += take
            left -= take
        open_slots = [i for i in open_slots if parts[i] < capacities[i]]
    return parts


def remove_lowest(scores: torch.Tensor, keep: torch.Tensor, n_remove: int, seed: int) -> torch.Tensor:
    """Return ``keep`` with its ``n_remove`` lowest-scoring kept tiles switched off.

    ``scores`` and ``keep`` have the tile-grid shape; equal scores are ordered by a permutation drawn
    from ``seed``, so the result is reproducible.
    """
    if scores.shape != keep.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and keep mask {tuple(keep.shape)} differ in shape")
    flat_keep = keep.reshape(-1).clone()
    candidates = torch.nonzero(flat_keep).reshape(-1)
    if n_remove > candidates.numel():
        raise ValueError(f"cannot remove {n_remove} tiles: only {candidates.numel()} are kept")
    if n_remove <= 0:
        return flat_keep.reshape(keep.shape)
    gen = torch.Generator().manual_seed(int(seed))
    perm = candidates[torch.randperm(candidates.numel(), generator=gen)]
    vals = scores.detach().reshape(-1).double().cpu()[perm]
    order = torch.argsort(vals, stable=True)
    flat_keep[perm[order[:n_remove]]] = False
    return flat_keep.reshape(keep.shape)


def layouts_from_model(model: torch.nn.Module, tile: tuple[int, int]) -> dict[str, TileLayout]:
    """Tile layouts read from a model's weights: a tile is kept iff it has a nonzero element."""
    params = dict(model.named_parameters())
    out = {}
    for w in model_prunable_weights(model):
        check_tile(w.shape, tile, w.name)
        out[w.name] = TileLayout.from_weight(params[w.name].detach().cpu().numpy(), tile)
    return out


def masks_tile_sparsity(masks: ModelMasks) -> float:
    """Fraction of removed tiles, weighted by tile area, over all layouts of ``masks``."""
    total = sum(np.prod(lay.shape) for lay in masks.layouts.values())
    kept = sum(lay.kept.size * lay.tile[0] * lay.tile[1] for lay in masks.layouts.values())
    return 1.0 - float(kept) / float(total) if total else 0.0


def expand_tiles(grid: torch.Tensor, tile: tuple[int, int]) -> torch.Tensor:
    """A per-tile tensor ``(gr, gc)`` blown up to element shape ``(gr*tr, gc*tc)``."""
    return grid.repeat_interleave(tile[0], 0).repeat_interleave(tile[1], 1)


@torch.no_grad()
def fraction_below(weights: dict[str, torch.Tensor], tile: tuple[int, int], ratio: float) -> float:
    """Fraction of tiles whose RMS is below ``ratio`` times the RMS of their whole weight."""
    below, total = 0, 0
    for w in weights.values():
        energy = tile_energy(w, tile)
        mean_tile_energy = energy.mean()  # = RMS(weight)^2 * tile area
        below = below + (energy < (ratio ** 2) * mean_tile_energy).sum() + (mean_tile_energy == 0) * energy.numel()
        total += energy.numel()
    return float(below) / max(total, 1)
