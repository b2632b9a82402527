"""Random-weight BERT classifiers of the standard shapes, randomly pruned, exported for libet.

Used by the benchmark (speed does not depend on the weights) and by the GPU correctness checks
(``cuda_lib/gpu/check.py``): a model of a named shape, random 16x16 tile masks at a given density on
every encoder linear weight, random pruned heads and random pruned head dimensions (zero rows of
Wq / Wk / Wv inside kept heads), applied to the PyTorch model too, then exported with ``export_npy``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import export_npy
from .tiles import ModelMasks, TileLayout


@dataclass(frozen=True)
class Dims:
    """Encoder hyper-parameters of a named shape."""

    layers: int
    hidden: int
    heads: int
    intermediate: int


SHAPES: dict[str, Dims] = {
    "bert-base": Dims(12, 768, 12, 3072),
    "bert-large": Dims(24, 1024, 16, 4096),
    "minilm": Dims(6, 384, 12, 1536),
}


def make_model(shape: str, *, vocab: int = 30522, labels: int = 2, seed: int = 0, max_positions: int = 512,
               attn: str = "eager", gain: float = 1.0):
    """A randomly initialised ``BertForSequenceClassification`` of ``SHAPES[shape]`` (float32, eval mode).

    ``gain`` multiplies every parameter after the default init (larger values make attention peakier,
    which exercises softmax harder in the correctness checks)."""
    from transformers import BertConfig, BertForSequenceClassification

    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {sorted(SHAPES)}")
    d = SHAPES[shape]
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab, hidden_size=d.hidden, num_hidden_layers=d.layers,
                        num_attention_heads=d.heads, intermediate_size=d.intermediate,
                        max_position_embeddings=max_positions, type_vocab_size=2, num_labels=labels,
                        attn_implementation=attn)
    model = BertForSequenceClassification(config).eval()
    if gain != 1.0:
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(gain)
    return model


def random_pruning(model, density: float, *, tile: tuple[int, int] = (16, 16), head_frac: float = 0.0,
                   dim_frac: float = 0.0, seed: int = 0) -> ModelMasks:
    """Prune ``model`` in place at random and return the masks to export.

    Each encoder linear weight keeps each tile with probability ``density`` (all tiles when
    ``density >= 1``); in each layer ``round(head_frac * heads)`` heads are removed; inside kept heads a
    fraction ``dim_frac`` of the Q, K and V rows (with their biases) is zeroed."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    rng = np.random.default_rng(seed)
    cfg = model.config
    sd = model.state_dict()
    d = cfg.hidden_size // cfg.num_attention_heads
    layouts: dict[str, TileLayout] = {}
    heads: dict[int, list[int]] = {}
    with torch.no_grad():
        for layer in range(cfg.num_hidden_layers):
            p = f"bert.encoder.layer.{layer}."
            if density < 1.0:
                for module in export_npy.ENCODER_LINEARS:
                    name = f"{p}{module}.weight"
                    rows, cols = sd[name].shape
                    layout = TileLayout.from_tile_mask(rng.random((rows // tile[0], cols // tile[1])) < density, tile)
                    sd[name].mul_(torch.from_numpy(layout.dense_mask()).to(sd[name].dtype))
                    layouts[name] = layout
            n_pruned = int(round(head_frac * cfg.num_attention_heads))
            pruned = sorted(rng.choice(cfg.num_attention_heads, size=n_pruned, replace=False).tolist())
            if pruned:
                heads[layer] = pruned
            for h in range(cfg.num_attention_heads):
                rows_all = np.arange(h * d, (h + 1) * d)
                for m in ("query", "key", "value"):
                    zero = rows_all if h in pruned else rng.choice(rows_all, size=int(dim_frac * d), replace=False)
                    if zero.size:
                        idx = torch.from_numpy(zero)
                        sd[f"{p}attention.self.{m}.weight"][idx] = 0
                        sd[f"{p}attention.self.{m}.bias"][idx] = 0
                if h in pruned:
                    sd[f"{p}attention.output.dense.weight"][:, h * d:(h + 1) * d] = 0
    return ModelMasks(layouts, heads)


def export(model, masks: ModelMasks, out_dir: Path, dtype: str = "float32") -> Path:
    """Write ``model`` (already pruned by ``masks``) as ``.npy`` files + manifest; returns the manifest path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shape = export_npy.BertShape.from_hf(model.config)
    export_npy.export_tensors(export_npy.state_dict_arrays(model), shape, masks, out_dir, dtype)
    return out_dir / export_npy.MANIFEST
