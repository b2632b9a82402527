"""Encoder FLOPs per token: dense formula and kept-tile/kept-head accounting."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline_steps.flops import model_flops_per_token
from pipeline_steps.masking import element_masks
from pipeline_steps.tiles import ModelMasks, TileLayout
from pruning_fixtures import tiny_bert


def test_dense_flops_count_every_linear_and_both_attention_products():
    model = tiny_bert()  # hidden 64, 2 layers, intermediate 128
    per_layer = 2 * (4 * 64 * 64 + 2 * 64 * 128) + 2 * 32 * (64 + 64)
    assert model_flops_per_token(model, {}, 32) == 2 * per_layer


def test_pruned_tiles_and_heads_are_not_counted():
    model = tiny_bert()
    ffn = "bert.encoder.layer.0.intermediate.dense.weight"
    tile_mask = np.ones((8, 4), dtype=bool)
    tile_mask[:4, :] = False  # half of FFN1 (16 tiles of 16x16 = 4096 elements)
    masks = ModelMasks({ffn: TileLayout.from_tile_mask(tile_mask, (16, 16))}, {1: [0]})
    emasks = element_masks(model, masks)
    dense = model_flops_per_token(model, {}, 32)
    # head 0 of layer 1: 16 rows of Wq/Wk/Wv and 16 columns of Wo (64 each), 16 Q/K and 16 V dims
    removed = 2 * 4096 + 2 * 4 * 16 * 64 + 2 * 32 * (16 + 16)
    assert model_flops_per_token(model, emasks, 32) == dense - removed
    with pytest.raises(ValueError, match="seq_len"):
        model_flops_per_token(model, emasks, 0)
