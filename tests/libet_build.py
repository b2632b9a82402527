"""Shared helpers of the libet tests: the library built once per session (CPU only, cached build
folder ``cuda_lib/build-tests``), random small BERT classifiers, random tile masks / pruned heads
applied to the PyTorch model too, and export to a manifest folder.

Test modules import the fixtures: ``from libet_build import libet  # noqa: F401``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline_steps import build_lib, export_npy
from pipeline_steps.tiles import ModelMasks, TileLayout

ROOT = Path(__file__).resolve().parent.parent
BUILD_DIR = ROOT / "cuda_lib" / "build-tests"


@dataclass(frozen=True)
class Libet:
    lib: Path
    exe: Path


@pytest.fixture(scope="session")
def libet() -> Libet:
    """libet.so and et_infer, CPU build (incremental in cuda_lib/build-tests)."""
    result = build_lib.cmake_build(BUILD_DIR, cuda="OFF", build_type="Release", jobs=2)
    return Libet(result["lib"], result["exe"])


def random_bert(seed: int = 0, *, layers: int = 2, hidden: int = 64, heads: int = 4, intermediate: int = 128,
                vocab: int = 97, max_positions: int = 40, type_vocab: int = 2, labels: int = 3):
    """A randomly initialised ``BertForSequenceClassification`` (eager attention, float32, eval mode)."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=intermediate, max_position_embeddings=max_positions,
                        type_vocab_size=type_vocab, num_labels=labels, attn_implementation="eager")
    model = BertForSequenceClassification(config).eval()
    with torch.no_grad():  # larger than the default init so that logits are not all near zero
        for p in model.parameters():
            p.mul_(2.0)
    return model


def random_masks(model, seed: int, tile: tuple[int, int] = (16, 16), density: float = 0.5,
                 prune_heads: bool = True) -> ModelMasks:
    """Random tile layouts on every encoder linear weight and (optionally) one pruned head per layer."""
    rng = np.random.default_rng(seed)
    cfg = model.config
    layouts: dict[str, TileLayout] = {}
    for layer in range(cfg.num_hidden_layers):
        for module in export_npy.ENCODER_LINEARS:
            name = f"bert.encoder.layer.{layer}.{module}.weight"
            rows, cols = model.state_dict()[name].shape
            grid = (rows // tile[0], cols // tile[1])
            keep = rng.random(grid) < density
            layouts[name] = TileLayout.from_tile_mask(keep, tile)
    heads = {}
    if prune_heads:
        for layer in range(cfg.num_hidden_layers):
            heads[layer] = sorted(rng.choice(cfg.num_attention_heads, size=1 + layer % 2, replace=False).tolist())
    return ModelMasks(layouts, heads)


def apply_masks(model, masks: ModelMasks) -> None:
    """Zero the weights outside kept tiles and every weight of the pruned heads, in place."""
    sd = model.state_dict()
    d = model.config.hidden_size // model.config.num_attention_heads
    with torch.no_grad():
        for name, layout in masks.layouts.items():
            sd[name].mul_(torch.from_numpy(layout.dense_mask()).to(sd[name].dtype))
        for layer, heads in masks.pruned_heads.items():
            p = f"bert.encoder.layer.{layer}.attention."
            for h in heads:
                rows = slice(h * d, (h + 1) * d)
                for m in ("query", "key", "value"):
                    sd[f"{p}self.{m}.weight"][rows] = 0
                    sd[f"{p}self.{m}.bias"][rows] = 0
                sd[f"{p}output.dense.weight"][:, rows] = 0


def export(model, out_dir: Path, masks: ModelMasks | None = None, dtype: str = "float32") -> Path:
    """Export ``model`` into ``out_dir``; returns the manifest path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shape = export_npy.BertShape.from_hf(model.config)
    export_npy.export_tensors(export_npy.state_dict_arrays(model), shape, masks or ModelMasks({}, {}), out_dir, dtype)
    return out_dir / export_npy.MANIFEST


def ragged_batch(rng: np.random.Generator, lengths: list[int], vocab: int, type_vocab: int = 2):
    """Packed token ids, segment ids (int32) and lengths of a ragged batch."""
    lengths_arr = np.asarray(lengths, dtype=np.int32)
    total = int(lengths_arr.sum())
    tokens = rng.integers(0, vocab, size=total, dtype=np.int32)
    segments = rng.integers(0, type_vocab, size=total, dtype=np.int32)
    return tokens, segments, lengths_arr


def torch_logits(model, tokens: np.ndarray, segments: np.ndarray | None, lengths: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """HF logits (padded batch + attention mask) and each sequence's last hidden states."""
    batch, max_len = len(lengths), int(lengths.max())
    ids = torch.zeros(batch, max_len, dtype=torch.long)
    seg = torch.zeros(batch, max_len, dtype=torch.long)
    mask = torch.zeros(batch, max_len, dtype=torch.long)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    for b in range(batch):
        n = int(lengths[b])
        ids[b, :n] = torch.from_numpy(tokens[offsets[b]:offsets[b + 1]].astype(np.int64))
        if segments is not None:
            seg[b, :n] = torch.from_numpy(segments[offsets[b]:offsets[b + 1]].astype(np.int64))
        mask[b, :n] = 1
    with torch.no_grad():
        out = model(input_ids=ids, token_type_ids=seg, attention_mask=mask, output_hidden_states=True)
    hidden = out.hidden_states[-1].numpy()
    return out.logits.numpy(), [hidden[b, : int(lengths[b])] for b in range(batch)]
