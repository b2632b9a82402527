"""Tile masks applied to a torch model: element masks from ``ModelMasks``, hard pruning, enforcement
during training (gradients of removed elements are zeroed and masks re-applied after every optimizer
step), and the exactness check that training did not revive a removed element.
"""

from __future__ import annotations

import numpy as np
import torch

from .head_pruning import attention_element_masks, attention_layers
from .tile_pruning import PrunableWeight, model_prunable_weights
from .tiles import ModelMasks


def element_masks_np(weights: list[PrunableWeight], num_heads: int, masks: ModelMasks) -> dict[str, np.ndarray]:
    """Boolean element masks (True: may be nonzero) of every weight and bias the masks constrain.

    Layout names must be among ``weights`` with matching shapes; pruned-head layers must exist. The
    attention rule (heads, dead Q/K/V dimensions) is :func:`head_pruning.attention_element_masks`.
    Parameters left wholly unconstrained are omitted.
    """
    by_name = {w.name: w for w in weights}
    for name, lay in masks.layouts.items():
        if name not in by_name:
            raise ValueError(f"masks: {name!r} is not an encoder linear weight of the model")
        if lay.shape != by_name[name].shape:
            raise ValueError(f"masks: {name} layout shape {lay.shape} != weight shape {by_name[name].shape}")
    atts = attention_layers(weights, num_heads)
    unknown = sorted(set(masks.pruned_heads) - {a.layer for a in atts})
    if unknown:
        raise ValueError(f"masks: pruned_heads names layers {unknown} the model does not have")
    out: dict[str, np.ndarray] = {}
    for att in atts:
        out.update(attention_element_masks(att, masks.layouts, masks.pruned_heads.get(att.layer, [])))
    for w in weights:
        if w.kind == "ffn" and w.name in masks.layouts:
            out[w.name] = masks.layouts[w.name].dense_mask()
    return {name: m for name, m in out.items() if not m.all()}


def element_masks(model: torch.nn.Module, masks: ModelMasks) -> dict[str, torch.Tensor]:
    """:func:`element_masks_np` for a model, as torch tensors on each parameter's device."""
    emasks = element_masks_np(model_prunable_weights(model), model.config.num_attention_heads, masks)
    params = dict(model.named_parameters())
    return {name: torch.from_numpy(m).to(params[name].device) for name, m in emasks.items()}


@torch.no_grad()
def apply_masks(model: torch.nn.Module, emasks: dict[str, torch.Tensor]) -> None:
    """Zero every masked-out element in place (hard pruning)."""
    params = dict(model.named_parameters())
    for name, mask in emasks.items():
        p = params[name]
        p.mul_(mask.to(device=p.device, dtype=p.dtype))


@torch.no_grad()
def mask_violations(model: torch.nn.Module, emasks: dict[str, torch.Tensor]) -> dict[str, int]:
    """Per parameter, how many masked-out elements are not exactly zero (empty dict: masks hold)."""
    params = dict(model.named_parameters())
    out = {}
    for name, mask in emasks.items():
        n = int((params[name].detach()[~mask.to(params[name].device)] != 0).sum())
        if n:
            out[name] = n
    return out


class MaskEnforcer:
    """Keeps removed elements exactly zero while a model trains.

    Gradient hooks zero the gradients of removed elements (so optimizer moments stay zero there) and
    :meth:`after_step` re-applies the masks after every optimizer step (weight decay, numerical
    drift). Use as a context manager, or call :meth:`close` to remove the hooks.
    """

    def __init__(self, model: torch.nn.Module, emasks: dict[str, torch.Tensor]) -> None:
        self.model = model
        self.emasks = emasks
        params = dict(model.named_parameters())
        self._handles = []
        for name, mask in emasks.items():
            m = mask.to(device=params[name].device, dtype=params[name].dtype)
            self._handles.append(params[name].register_hook(lambda g, m=m: g * m))
        apply_masks(model, emasks)

    def after_step(self, step: int) -> dict[str, float]:  # noqa: ARG002 (train() hook signature)
        """Re-apply the masks; nothing to log."""
        apply_masks(self.model, self.emasks)
        return {}

    def close(self) -> None:
        """Remove the gradient hooks."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> "MaskEnforcer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@torch.no_grad()
def weight_sparsity(model: torch.nn.Module, weights: list[PrunableWeight] | None = None) -> float:
    """Fraction of exactly-zero elements over the encoder's linear weights."""
    weights = weights or model_prunable_weights(model)
    params = dict(model.named_parameters())
    zeros = sum(int((params[w.name] == 0).sum()) for w in weights)
    total = sum(params[w.name].numel() for w in weights)
    return zeros / total


def weight_arrays(model: torch.nn.Module, weights: list[PrunableWeight]) -> dict[str, np.ndarray]:
    """CPU float32 copies of the given weights (inputs to mask selection)."""
    params = dict(model.named_parameters())
    return {w.name: params[w.name].detach().float().cpu().numpy() for w in weights}
