"""Encoder FLOPs per token that a tile-sparse, head-pruned model still needs.

Counted: the six linear layers of every encoder layer (2 FLOPs per kept weight element: kept tiles
minus the rows/columns of pruned heads and dead dimensions) and the two attention products per token
(``2 * seq_len`` FLOPs per live Q/K dimension for Q·Kᵀ and per live V dimension for P·V). Biases,
softmax, GELU and LayerNorm are left out (linear in the hidden size, the same for dense and pruned).
"""

from __future__ import annotations

import torch

from .head_pruning import attention_layers
from .tile_pruning import PrunableWeight, model_prunable_weights


def encoder_flops_per_token(weights: list[PrunableWeight], num_heads: int, emasks: dict[str, torch.Tensor],
                            seq_len: int) -> float:
    """FLOPs per token of the encoder under element masks ``emasks`` (empty: the dense model)."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")

    def kept(name: str, full: int) -> int:
        m = emasks.get(name)
        return full if m is None else int(m.sum())

    total = 0
    for w in weights:
        total += 2 * kept(w.name, w.shape[0] * w.shape[1])
    for att in attention_layers(weights, num_heads):
        qk = kept(att.query.bias_name, att.all_head)
        v = kept(att.value.bias_name, att.all_head)
        total += 2 * seq_len * (qk + v)
    return float(total)


def model_flops_per_token(model: torch.nn.Module, emasks: dict[str, torch.Tensor], seq_len: int) -> float:
    """:func:`encoder_flops_per_token` for a BERT model."""
    return encoder_flops_per_token(model_prunable_weights(model), model.config.num_attention_heads, emasks, seq_len)
