"""Tensor-tile layouts: which tiles of a weight matrix are kept.

A weight of shape ``(rows, cols)`` is cut into tiles of shape ``(tr, tc)``; a tile is kept whole or
removed whole. A layout is the tile shape plus the strictly ascending ids of the kept tiles
(``tile_row * (cols // tc) + tile_col``). The same layout is what ``export_npy`` writes to the
manifest (``tiled`` records) and what the inference library reads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class TileLayout:
    """The kept tiles of one ``(rows, cols)`` weight cut into ``(tr, tc)`` tiles."""

    shape: tuple[int, int]
    tile: tuple[int, int]
    kept: np.ndarray = field(repr=False)

    def __post_init__(self) -> None:
        rows, cols = self.shape
        tr, tc = self.tile
        if tr <= 0 or tc <= 0 or rows % tr or cols % tc:
            raise ValueError(f"tile shape {tr}x{tc} does not divide weight shape {rows}x{cols}")
        kept = np.asarray(self.kept, dtype=np.int32).reshape(-1)
        if kept.size and (kept[0] < 0 or kept[-1] >= self.n_tiles or np.any(np.diff(kept) <= 0)):
            raise ValueError(f"kept tile ids must be strictly ascending in [0, {self.n_tiles})")
        object.__setattr__(self, "kept", kept)

    @property
    def grid(self) -> tuple[int, int]:
        """Number of tile rows and tile columns."""
        return self.shape[0] // self.tile[0], self.shape[1] // self.tile[1]

    @property
    def n_tiles(self) -> int:
        """Total number of tiles in the weight."""
        g = self.grid
        return g[0] * g[1]

    @property
    def density(self) -> float:
        """Fraction of tiles kept."""
        return float(self.kept.size) / float(self.n_tiles)

    def tile_mask(self) -> np.ndarray:
        """Boolean ``grid``-shaped mask, True where a tile is kept."""
        m = np.zeros(self.n_tiles, dtype=bool)
        m[self.kept] = True
        return m.reshape(self.grid)

    def dense_mask(self) -> np.ndarray:
        """Boolean ``shape``-shaped element mask, True inside kept tiles."""
        tr, tc = self.tile
        return np.kron(self.tile_mask(), np.ones((tr, tc), dtype=bool)).astype(bool)

    def pack(self, weight: np.ndarray) -> np.ndarray:
        """Kept tiles of ``weight`` as an ``(n_kept, tr, tc)`` array, in ``kept`` order."""
        w = np.asarray(weight)
        if w.shape != self.shape:
            raise ValueError(f"weight shape {w.shape} != layout shape {self.shape}")
        tr, tc = self.tile
        gr, gc = self.grid
        tiles = w.reshape(gr, tr, gc, tc).transpose(0, 2, 1, 3).reshape(gr * gc, tr, tc)
        return np.ascontiguousarray(tiles[self.kept])

    def unpack(self, data: np.ndarray) -> np.ndarray:
        """Dense ``shape`` weight from packed kept tiles; removed tiles are zero."""
        tr, tc = self.tile
        gr, gc = self.grid
        data = np.asarray(data)
        if data.shape != (self.kept.size, tr, tc):
            raise ValueError(f"packed tiles shape {data.shape} != {(self.kept.size, tr, tc)}")
        tiles = np.zeros((gr * gc, tr, tc), dtype=data.dtype)
        tiles[self.kept] = data
        return tiles.reshape(gr, gc, tr, tc).transpose(0, 2, 1, 3).reshape(self.shape)

    @classmethod
    def from_tile_mask(cls, tile_mask: np.ndarray, tile: tuple[int, int]) -> "TileLayout":
        """Layout from a boolean ``grid``-shaped tile mask."""
        m = np.asarray(tile_mask, dtype=bool)
        shape = (m.shape[0] * tile[0], m.shape[1] * tile[1])
        return cls(shape, tuple(tile), np.flatnonzero(m.reshape(-1)).astype(np.int32))

    @classmethod
    def from_weight(cls, weight: np.ndarray, tile: tuple[int, int]) -> "TileLayout":
        """Layout keeping every tile of ``weight`` that has a nonzero element."""
        w = np.asarray(weight)
        tr, tc = tile
        if w.ndim != 2 or w.shape[0] % tr or w.shape[1] % tc:
            raise ValueError(f"tile shape {tr}x{tc} does not divide weight shape {w.shape}")
        gr, gc = w.shape[0] // tr, w.shape[1] // tc
        nz = np.abs(w.reshape(gr, tr, gc, tc)).sum(axis=(1, 3)) != 0
        return cls.from_tile_mask(nz, tile)

    def to_json(self) -> dict:
        """A JSON-serialisable description."""
        return {"shape": list(self.shape), "tile": list(self.tile), "kept": self.kept.tolist()}

    @classmethod
    def from_json(cls, obj: dict) -> "TileLayout":
        """Inverse of ``to_json``."""
        return cls(tuple(obj["shape"]), tuple(obj["tile"]), np.asarray(obj["kept"], dtype=np.int32))


@dataclass
class ModelMasks:
    """Tile layouts of a model's pruned linear weights plus its pruned attention heads."""

    layouts: dict[str, TileLayout]
    pruned_heads: dict[int, list[int]]

    def save(self, path: Path) -> None:
        """Write as JSON (no pickle); written to a temporary name, then renamed."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        payload = {
            "version": 1,
            "layouts": {k: v.to_json() for k, v in sorted(self.layouts.items())},
            "pruned_heads": {str(k): sorted(v) for k, v in sorted(self.pruned_heads.items())},
        }
        tmp.write_text(json.dumps(payload))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> "ModelMasks":
        """Read a file written by ``save``; errors name the file."""
        path = Path(path)
        try:
            payload = json.loads(path.read_text())
            layouts = {k: TileLayout.from_json(v) for k, v in payload["layouts"].items()}
            heads = {int(k): [int(h) for h in v] for k, v in payload["pruned_heads"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError, OverflowError) as exc:
            raise ValueError(f"{path}: not a valid masks file: {type(exc).__name__}: {exc}") from exc
        return cls(layouts, heads)
