"""Choose a model's tile masks for a sparsity plan: attention structures first, then single tiles.

Removed tiles are counted per pool (one pool per encoder layer and weight kind: ``qkv``,
``attn_output``, ``ffn``). The overall count is ``round(target * all tiles)`` and is split over the
pools in proportion to the plan's per-pool ratios, so the overall target is met within one tile.

In each layer, a share of the attention pools' budget (``structured_share``) is spent on whole
structures: the least important heads first (by the plan's head scores), then the Q/K and V/O
dimension blocks with the least energy per element. The rest of every pool is filled with the
lowest-energy single tiles of each weight (ties broken from the seed).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .head_pruning import AttentionLayer, Unit, attention_layers, covered_tiles, dim_units, head_unit, unit_energy
from .tile_pruning import KINDS, PrunableWeight, check_tile, remove_lowest, removal_count, split_count, tile_energy
from .tiles import ModelMasks, TileLayout


@dataclass
class SparsityPlan:
    """What to prune: overall target, per-(layer, kind) ratios, head scores, structure share, tile, seed."""

    target: float
    pool_sparsity: dict[tuple[int, str], float]
    tile: tuple[int, int]
    seed: int
    head_scores: np.ndarray | None = None  # [layers, heads], higher = more important; None: tiles only
    structured_share: float = 0.5

    def scaled(self, target: float) -> "SparsityPlan":
        """The same plan toward a lower overall ``target`` (every pool ratio scaled alike)."""
        if not 0.0 <= target <= self.target:
            raise ValueError(f"scaled plan target {target} must be in [0, {self.target}]")
        factor = target / self.target if self.target > 0 else 0.0
        pools = {k: min(1.0, v * factor) for k, v in self.pool_sparsity.items()}
        return SparsityPlan(target, pools, self.tile, self.seed, self.head_scores, self.structured_share)


def cubic_ramp(final: float, step: int, ramp_steps: int) -> float:
    """Gradual-pruning schedule: ``final * (1 - (1 - step / ramp_steps) ** 3)``, ``final`` from ``ramp_steps`` on."""
    if ramp_steps <= 0 or step >= ramp_steps:
        return final
    return final * (1.0 - (1.0 - max(step, 0) / ramp_steps) ** 3)


def pool_sizes(weights: list[PrunableWeight], tile: tuple[int, int]) -> dict[tuple[int, str], int]:
    """Tile count of every (layer, kind) pool."""
    out: dict[tuple[int, str], int] = {}
    for w in weights:
        gr, gc = check_tile(w.shape, tile, w.name)
        out[(w.layer, w.kind)] = out.get((w.layer, w.kind), 0) + gr * gc
    return out


def pool_removals(weights: list[PrunableWeight], plan: SparsityPlan) -> dict[tuple[int, str], int]:
    """Tiles to remove per pool: ``round(target * all tiles)`` split by the plan's per-pool ratios."""
    sizes = pool_sizes(weights, plan.tile)
    keys = sorted(sizes)
    missing = [k for k in keys if k not in plan.pool_sparsity]
    if missing:
        raise ValueError(f"sparsity plan has no ratio for pools {missing}")
    total = removal_count(sum(sizes.values()), plan.target)
    parts = split_count(total, [plan.pool_sparsity[k] * sizes[k] for k in keys], [sizes[k] for k in keys])
    return dict(zip(keys, parts))


class _Selection:
    """Kept-tile grids of every weight plus removal bookkeeping per pool."""

    def __init__(self, weights: list[PrunableWeight], tile: tuple[int, int]) -> None:
        self.tile = tile
        self.info = {w.name: w for w in weights}
        self.keep = {w.name: torch.ones(check_tile(w.shape, tile, w.name), dtype=torch.bool) for w in weights}
        self.removed: dict[tuple[int, str], int] = {}

    def cost(self, covered: dict[str, np.ndarray]) -> dict[tuple[int, str], int]:
        """Still-kept tiles per pool that removing ``covered`` would take."""
        out: dict[tuple[int, str], int] = {}
        for name, grid in covered.items():
            w = self.info[name]
            n = int((self.keep[name] & torch.from_numpy(grid)).sum())
            out[(w.layer, w.kind)] = out.get((w.layer, w.kind), 0) + n
        return out

    def remove(self, covered: dict[str, np.ndarray]) -> None:
        for pool, n in self.cost(covered).items():
            self.removed[pool] = self.removed.get(pool, 0) + n
        for name, grid in covered.items():
            self.keep[name] &= ~torch.from_numpy(grid)

    def removed_in(self, pool: tuple[int, str]) -> int:
        return self.removed.get(pool, 0)


def _structured(sel: _Selection, att: AttentionLayer, arrays: dict[str, np.ndarray], scores: np.ndarray,
                budget: dict[tuple[int, str], int], share: float) -> list[int]:
    """Remove heads, then dimension blocks, within ``share`` of the layer's attention budget; the pruned heads."""
    pools = [(att.layer, "qkv"), (att.layer, "attn_output")]
    allowance = int(share * sum(budget[p] for p in pools))
    shapes = {w.name: w.shape for w in (att.query, att.key, att.value, att.output)}
    spent = 0

    def fits(cost: dict[tuple[int, str], int]) -> bool:
        total = sum(cost.values())
        return total > 0 and spent + total <= allowance and all(
            sel.removed_in(p) + n <= budget[p] for p, n in cost.items())

    pruned: list[int] = []
    for h in np.argsort(scores, kind="stable"):
        if len(pruned) + 1 >= att.num_heads:
            break
        covered = covered_tiles(head_unit(att, int(h)), att, shapes, sel.tile)
        cost = sel.cost(covered)
        if not fits(cost):
            break
        sel.remove(covered)
        spent += sum(cost.values())
        pruned.append(int(h))

    units: list[Unit] = dim_units(att, sel.tile, set(pruned))
    density = []
    for u in units:
        energy, count = unit_energy(u, att, arrays)
        density.append(energy / max(count, 1))
    for i in np.argsort(np.asarray(density), kind="stable"):
        covered = covered_tiles(units[int(i)], att, shapes, sel.tile)
        cost = sel.cost(covered)
        if fits(cost):
            sel.remove(covered)
            spent += sum(cost.values())
    return sorted(pruned + _emptied_heads(sel, att, set(pruned)))


def _emptied_heads(sel: _Selection, att: AttentionLayer, pruned: set[int]) -> list[int]:
    """Heads whose Wq, Wk and Wv rows ended up wholly removed block by block."""
    tr = sel.tile[0]
    rows_per_head = att.head_dim // tr
    out = []
    for h in range(att.num_heads):
        if h in pruned:
            continue
        rows = slice(h * rows_per_head, (h + 1) * rows_per_head)
        if not any(bool(sel.keep[w.name][rows].any()) for w in (att.query, att.key, att.value)):
            out.append(h)
    return out


def select_masks(arrays: dict[str, np.ndarray], weights: list[PrunableWeight], num_heads: int,
                 plan: SparsityPlan) -> ModelMasks:
    """Tile layouts (and pruned heads) for ``plan``, chosen from the weight values in ``arrays``."""
    for w in weights:
        a = arrays.get(w.name)
        if a is None or tuple(a.shape) != w.shape:
            raise ValueError(f"{w.name}: expected an array of shape {w.shape}, got "
                             f"{None if a is None else tuple(a.shape)}")
    for (layer, kind), s in plan.pool_sparsity.items():
        if kind not in KINDS or not 0.0 <= s <= 1.0:
            raise ValueError(f"sparsity plan: pool ({layer}, {kind}) has invalid ratio {s}")
    budget = pool_removals(weights, plan)
    sel = _Selection(weights, plan.tile)
    pruned_heads: dict[int, list[int]] = {}
    if plan.head_scores is not None and plan.structured_share > 0:
        for att in attention_layers(weights, num_heads):
            heads = _structured(sel, att, arrays, np.asarray(plan.head_scores)[att.layer], budget,
                                plan.structured_share)
            if heads:
                pruned_heads[att.layer] = heads
    index = {w.name: i for i, w in enumerate(weights)}
    for pool in sorted(budget):
        members = [w for w in weights if (w.layer, w.kind) == pool]
        kept = [int(sel.keep[w.name].sum()) for w in members]
        deficit = budget[pool] - sel.removed_in(pool)
        parts = split_count(deficit, [float(k) for k in kept], kept)
        for w, n in zip(members, parts):
            seed = plan.seed * 100_003 + index[w.name]
            energy = tile_energy(torch.from_numpy(np.ascontiguousarray(arrays[w.name])), plan.tile)
            sel.keep[w.name] = remove_lowest(energy, sel.keep[w.name], n, seed)
    layouts = {w.name: TileLayout.from_tile_mask(sel.keep[w.name].numpy(), plan.tile) for w in weights}
    return ModelMasks(layouts, pruned_heads)
