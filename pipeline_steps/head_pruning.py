"""Attention-aware structure: whole heads and head-dimension blocks of Wq/Wk/Wv/Wo, removed consistently.

Units of one layer's attention (``all_head = heads * head_dim`` rows of Wq/Wk/Wv, columns of Wo):

- ``head`` h: rows ``[h*d, (h+1)*d)`` of Wq, Wk, Wv (and their biases) and the same columns of Wo;
- ``qk_dim`` block: ``tr`` consecutive rows of a head in both Wq and Wk (and both biases): a Q/K
  dimension only matters through q·k, so it is removed from both;
- ``vo_dim`` block: ``tr`` rows of Wv (and bias) together with the same columns of Wo, which only
  ever multiply that part of the attention context.

How a stored ``ModelMasks`` (tile layouts + pruned heads) becomes element masks is decided here
(:func:`attention_element_masks`), so every stage derives the same zeros:

- Wq/Wk/Wv: kept tiles, minus the rows of pruned heads;
- a Q/K dimension is dead when its row is removed in both Wq and Wk (or its head is pruned): both
  bias entries are zero;
- a V dimension is dead when its Wv row is removed (or its head is pruned): its bias entry and its
  column of Wo are zero (the context there is exactly zero);
- Wo: kept tiles, minus the columns of dead V dimensions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .tile_pruning import PrunableWeight, check_tile
from .tiles import TileLayout

UNIT_KINDS = ("head", "qk_dim", "vo_dim")


@dataclass(frozen=True)
class AttentionLayer:
    """The four attention weights of one encoder layer and its head count."""

    layer: int
    query: PrunableWeight
    key: PrunableWeight
    value: PrunableWeight
    output: PrunableWeight
    num_heads: int

    @property
    def all_head(self) -> int:
        """Rows of Wq/Wk/Wv (= columns of Wo)."""
        return self.query.shape[0]

    @property
    def head_dim(self) -> int:
        """Dimension of one head."""
        return self.all_head // self.num_heads


def attention_layers(weights: list[PrunableWeight], num_heads: int) -> list[AttentionLayer]:
    """Group the prunable weights into per-layer attention blocks; shapes are checked."""
    by_layer: dict[int, dict[str, PrunableWeight]] = {}
    for w in weights:
        by_layer.setdefault(w.layer, {})[w.role] = w
    out = []
    for layer in sorted(by_layer):
        roles = by_layer[layer]
        missing = [r for r in ("query", "key", "value", "attn_output") if r not in roles]
        if missing:
            raise ValueError(f"encoder layer {layer}: attention weights missing: {', '.join(missing)}")
        q, k, v, o = roles["query"], roles["key"], roles["value"], roles["attn_output"]
        if not (q.shape == k.shape == v.shape):
            raise ValueError(f"layer {layer}: Wq {q.shape}, Wk {k.shape}, Wv {v.shape} must have one shape")
        if o.shape[1] != q.shape[0] or q.shape[0] % num_heads:
            raise ValueError(f"layer {layer}: Wo {o.shape} / Wq {q.shape} do not fit {num_heads} heads")
        out.append(AttentionLayer(layer, q, k, v, o, num_heads))
    return out


@dataclass(frozen=True)
class Unit:
    """A structural unit of one layer's attention: its kind, head, and row range in ``[0, all_head)``."""

    kind: str
    layer: int
    head: int
    start: int
    stop: int

    def parts(self, att: AttentionLayer) -> list[tuple[str, int]]:
        """``(weight name, axis)`` pairs the unit's range is cut from (axis 0: rows, 1: columns)."""
        if self.kind == "head":
            return [(att.query.name, 0), (att.key.name, 0), (att.value.name, 0), (att.output.name, 1)]
        if self.kind == "qk_dim":
            return [(att.query.name, 0), (att.key.name, 0)]
        return [(att.value.name, 0), (att.output.name, 1)]


def head_unit(att: AttentionLayer, head: int) -> Unit:
    """The whole-head unit of ``head``."""
    d = att.head_dim
    return Unit("head", att.layer, head, head * d, (head + 1) * d)


def dim_units(att: AttentionLayer, tile: tuple[int, int], skip_heads: set[int]) -> list[Unit]:
    """All ``qk_dim`` and ``vo_dim`` blocks (``tile[0]`` rows each) of the heads not in ``skip_heads``."""
    block = tile[0]
    if att.head_dim % block:
        raise ValueError(f"layer {att.layer}: tile rows {block} do not divide the head dimension {att.head_dim} "
                         "(prune.tile with prune.head_pruning)")
    out = []
    for h in range(att.num_heads):
        if h in skip_heads:
            continue
        for start in range(h * att.head_dim, (h + 1) * att.head_dim, block):
            out.append(Unit("qk_dim", att.layer, h, start, start + block))
            out.append(Unit("vo_dim", att.layer, h, start, start + block))
    return out


def covered_tiles(unit: Unit, att: AttentionLayer, shapes: dict[str, tuple[int, int]],
                  tile: tuple[int, int]) -> dict[str, np.ndarray]:
    """Per weight name, the boolean tile grid of tiles lying wholly inside the unit's rows/columns."""
    out = {}
    for name, axis in unit.parts(att):
        gr, gc = check_tile(shapes[name], tile, name)
        size = tile[axis]
        grid = np.zeros((gr, gc), dtype=bool)
        first = -(-unit.start // size)
        last = unit.stop // size
        if last > first:
            if axis == 0:
                grid[first:last, :] = True
            else:
                grid[:, first:last] = True
        out[name] = grid
    return out


def unit_energy(unit: Unit, att: AttentionLayer, weights: dict[str, np.ndarray]) -> tuple[float, int]:
    """Sum of squares and element count of the unit's rows/columns across its weights."""
    total, count = 0.0, 0
    for name, axis in unit.parts(att):
        w = weights[name]
        part = w[unit.start:unit.stop, :] if axis == 0 else w[:, unit.start:unit.stop]
        total += float(np.square(part, dtype=np.float64).sum())
        count += int(part.size)
    return total, count


def attention_element_masks(att: AttentionLayer, layouts: dict[str, TileLayout],
                            pruned_heads: list[int]) -> dict[str, np.ndarray]:
    """Element masks (True: may be nonzero) of this layer's Wq/Wk/Wv/Wo and the Q/K/V biases."""
    d = att.head_dim
    head_alive = np.ones(att.all_head, dtype=bool)
    for h in pruned_heads:
        if not 0 <= h < att.num_heads:
            raise ValueError(f"layer {att.layer}: pruned head {h} is not in [0, {att.num_heads})")
        head_alive[h * d:(h + 1) * d] = False

    def tiles(w: PrunableWeight) -> np.ndarray:
        lay = layouts.get(w.name)
        if lay is None:
            return np.ones(w.shape, dtype=bool)
        if lay.shape != w.shape:
            raise ValueError(f"{w.name}: mask layout shape {lay.shape} != weight shape {w.shape}")
        return lay.dense_mask()

    mq, mk, mv, mo = (tiles(w) for w in (att.query, att.key, att.value, att.output))
    mq &= head_alive[:, None]
    mk &= head_alive[:, None]
    mv &= head_alive[:, None]
    qk_alive = mq.any(axis=1) | mk.any(axis=1)
    qk_alive &= head_alive
    v_alive = mv.any(axis=1) & head_alive
    mo &= v_alive[None, :]
    return {
        att.query.name: mq, att.key.name: mk, att.value.name: mv, att.output.name: mo,
        att.query.bias_name: qk_alive.copy(), att.key.bias_name: qk_alive.copy(), att.value.bias_name: v_alive,
    }


def head_weight_scores(atts: list[AttentionLayer], arrays: dict[str, np.ndarray]) -> np.ndarray:
    """``[layers, heads]`` weight-only head scores (energy per element of each head's unit)."""
    scores = np.zeros((len(atts), atts[0].num_heads if atts else 0))
    for i, att in enumerate(atts):
        for h in range(att.num_heads):
            energy, count = unit_energy(head_unit(att, h), att, arrays)
            scores[i, h] = energy / count
    return scores
