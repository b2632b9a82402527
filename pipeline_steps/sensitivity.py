"""The attention-aware sparsity policy, measured on (a subset of) the dev set.

- Layer sensitivity: the dev-loss increase when one layer alone has every linear weight
  magnitude-pruned by tiles to the target (the other layers untouched); one forward pass over the
  subset per layer.
- Head importance: the accumulated magnitude of the loss gradient with respect to a gate on every
  head's context output (one forward + backward pass per batch for all heads at once).
- Allocation: per-(layer, kind) ratios ``c * kinds[kind] * w[layer]`` capped (at ``max_ratio``, and
  never above 0.98), with ``c`` solved so that the element-weighted mean equals the overall target;
  ``w`` is 1 for the ``uniform`` policy and proportional to ``sensitivity ** -power`` for the
  ``sensitivity`` policy, whose cap is ``target + spread * (1 - target)``: a layer that barely
  matters at the target ratio may still break when stripped almost bare, so no layer is.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

from .tile_pruning import (KINDS, PrunableWeight, expand_tiles, model_prunable_weights, remove_lowest, removal_count,
                           tile_energy)

MAX_POOL_SPARSITY = 0.98


def _mean_loss(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]], device: torch.device) -> float:
    total, n = 0.0, 0
    with torch.inference_mode():
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            out = model(**batch)
            total += float(out.loss) * batch["input_ids"].shape[0]
            n += batch["input_ids"].shape[0]
    return total / max(n, 1)


def layer_sensitivity(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]], target: float,
                      tile: tuple[int, int], device: torch.device, seed: int = 0) -> dict[int, float]:
    """Dev-loss increase (clamped at 0) per layer when only that layer is tile-pruned to ``target``."""
    if not batches:
        raise ValueError("layer_sensitivity: no dev batches")
    model.to(device).eval()
    params = dict(model.named_parameters())
    weights = model_prunable_weights(model)
    base = _mean_loss(model, batches, device)
    out: dict[int, float] = {}
    for layer in sorted({w.layer for w in weights}):
        mine = [w for w in weights if w.layer == layer]
        saved = {w.name: params[w.name].detach().clone() for w in mine}
        try:
            with torch.no_grad():
                for i, w in enumerate(mine):
                    p = params[w.name]
                    energy = tile_energy(p, tile)
                    keep = remove_lowest(energy.cpu(), torch.ones_like(energy, dtype=torch.bool, device="cpu"),
                                         removal_count(energy.numel(), target), seed + i)
                    p.mul_(expand_tiles(keep.to(p.device), tile).to(p.dtype))
            out[layer] = max(_mean_loss(model, batches, device) - base, 0.0)
        finally:
            with torch.no_grad():
                for name, value in saved.items():
                    params[name].copy_(value)
    return out


def head_importance(model: torch.nn.Module, batches: Iterable[dict[str, torch.Tensor]],
                    device: torch.device) -> np.ndarray:
    """``[layers, heads]`` importance: summed |d loss / d gate| of a unit gate on each head's context."""
    cfg = model.config
    n_layers, n_heads = cfg.num_hidden_layers, cfg.num_attention_heads
    head_dim = cfg.hidden_size // n_heads
    gates = torch.ones(n_layers, n_heads, device=device, requires_grad=True)
    model.to(device).eval()
    handles = []
    for i, layer in enumerate(model.bert.encoder.layer):
        def gate_context(module, inputs, i=i):  # noqa: ARG001
            g = gates[i].repeat_interleave(head_dim).to(inputs[0].dtype)
            return (inputs[0] * g,) + tuple(inputs[1:])
        handles.append(layer.attention.output.dense.register_forward_pre_hook(gate_context))
    importance = torch.zeros(n_layers, n_heads, device=device)
    n = 0
    try:
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = model(**batch).loss
            (grad,) = torch.autograd.grad(loss, gates)
            importance += grad.abs().detach()
            n += 1
    finally:
        for h in handles:
            h.remove()
    if n == 0:
        raise ValueError("head_importance: no dev batches")
    return (importance / n).cpu().numpy()


def layer_weights(sensitivity: dict[int, float], power: float) -> dict[int, float]:
    """Per-layer multipliers ``∝ (sensitivity + floor) ** -power`` with mean 1 (floor: 5% of the mean)."""
    layers = sorted(sensitivity)
    s = np.array([sensitivity[l] for l in layers], dtype=np.float64)
    floor = 0.05 * s.mean() if s.mean() > 0 else 1.0
    w = (s + floor) ** (-power)
    w = w / w.mean()
    return {l: float(x) for l, x in zip(layers, w)}


def sensitivity_cap(target: float, spread: float) -> float:
    """Highest per-pool ratio the sensitivity policy may give: ``target + spread * (1 - target)``."""
    if not 0.0 <= spread <= 1.0:
        raise ValueError(f"prune.sensitivity.spread must be in [0, 1], got {spread}")
    return min(MAX_POOL_SPARSITY, target + spread * (1.0 - target))


def allocate(weights: list[PrunableWeight], target: float, kinds: dict[str, float],
             layer_weight: dict[int, float] | None = None,
             max_ratio: float = MAX_POOL_SPARSITY) -> dict[tuple[int, str], float]:
    """Per-(layer, kind) sparsity whose element-weighted mean over all encoder linear weights is ``target``."""
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ValueError(f"prune.kinds: unknown kinds {unknown} (known: {', '.join(KINDS)})")
    sizes: dict[tuple[int, str], int] = {}
    for w in weights:
        sizes[(w.layer, w.kind)] = sizes.get((w.layer, w.kind), 0) + w.shape[0] * w.shape[1]
    keys = sorted(sizes)
    n = np.array([sizes[k] for k in keys], dtype=np.float64)
    base = np.array([kinds.get(k[1], 1.0) * (layer_weight or {}).get(k[0], 1.0) for k in keys])
    if target == 0:
        return {k: 0.0 for k in keys}
    cap = min(max_ratio, MAX_POOL_SPARSITY)
    reachable = float((n * np.where(base > 0, cap, 0.0)).sum() / n.sum())
    if target > reachable + 1e-12:
        raise ValueError(f"prune target {target} is unreachable with prune.kinds {kinds}: at most "
                         f"{reachable:.3f} (a pool is capped at {cap:.3f})")

    def mean(c: float) -> float:
        return float((n * np.minimum(c * base, cap)).sum() / n.sum())

    lo, hi = 0.0, 1.0
    while mean(hi) < target:
        hi *= 2.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if mean(mid) < target else (lo, mid)
    s = np.minimum(hi * base, cap)
    return {k: float(v) for k, v in zip(keys, s)}
