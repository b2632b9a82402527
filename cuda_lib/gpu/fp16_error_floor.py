"""How much relative error fp16 storage alone causes in a BERT encoder (CPU, float64 emulation).

Runs a random-weight BERT (the GPU check's models: ``random_bert.make_model(..., gain=2.0)``) in float64
with a hand-written forward that rounds chosen tensors to fp16 at the points where libet's CUDA engine
stores them, and prints ||out - ref|| / ||ref|| of the last hidden states against the unrounded float64
forward. Each row switches on one set of roundings:

  weights      every parameter (embeddings, linear weights and biases, LayerNorm) held in fp16
  gemm-out     Q, K, V, the attention output and the FFN activations stored in fp16
  probs        softmax probabilities rounded to fp16 before P·V (the tensor-core input)
  residual     the residual stream (pre-LayerNorm sums and LayerNorm outputs) stored in fp16
  gemm-in      only the GEMM inputs rounded to fp16 (a float32 residual stream keeps its own copy)
  tanh-gelu    GELU in the tanh form instead of exact erf

"engine" is what the engine does (weights + gemm-out + probs + residual); "engine, fp32 residual" is the
same with the residual stream kept in float32. No GPU needed:

    python cuda_lib/gpu/fp16_error_floor.py --shape bert-base [--seed 1 --batch 4 --seq 128]
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from pipeline_steps import random_bert  # noqa: E402


@dataclass(frozen=True)
class Rounding:
    """Which tensors are stored in fp16 (everything else stays float64)."""

    weights: bool = False
    gemm_out: bool = False
    probs: bool = False
    residual: bool = False
    gemm_in: bool = False
    tanh_gelu: bool = False


ROWS: dict[str, Rounding] = {
    "weights": Rounding(weights=True),
    "gemm-out": Rounding(gemm_out=True),
    "probs": Rounding(probs=True),
    "residual": Rounding(residual=True),
    "gemm-in": Rounding(gemm_in=True),
    "tanh-gelu": Rounding(tanh_gelu=True),
    "activations (gemm-out + probs + residual)": Rounding(gemm_out=True, probs=True, residual=True),
    "activations, tanh GELU": Rounding(gemm_out=True, probs=True, residual=True, tanh_gelu=True),
    "activations, fp32 residual": Rounding(gemm_out=True, probs=True, gemm_in=True),
    "engine (weights + activations)": Rounding(weights=True, gemm_out=True, probs=True, residual=True),
    "engine, tanh GELU": Rounding(weights=True, gemm_out=True, probs=True, residual=True, tanh_gelu=True),
    "engine, fp32 residual": Rounding(weights=True, gemm_out=True, probs=True, gemm_in=True),
}


def _fp16(t: torch.Tensor, on: bool) -> torch.Tensor:
    return t.half().double() if on else t


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| (L2 over all elements)."""
    return float((out - ref).norm() / ref.norm())


def encoder(model, ids: torch.Tensor, seg: torch.Tensor, r: Rounding) -> torch.Tensor:
    """Last hidden states of ``model`` (a BertForSequenceClassification) in float64 with roundings ``r``."""
    cfg = model.config
    p = {k: _fp16(v.double(), r.weights) for k, v in model.state_dict().items()}
    heads, hidden = cfg.num_attention_heads, cfg.hidden_size
    d = hidden // heads
    batch, length = ids.shape

    def layernorm(x: torch.Tensor, name: str) -> torch.Tensor:
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        return (x - mu) / torch.sqrt(var + cfg.layer_norm_eps) * p[name + ".weight"] + p[name + ".bias"]

    def linear(x: torch.Tensor, name: str) -> torch.Tensor:
        return _fp16(x @ p[name + ".weight"].T + p[name + ".bias"], r.gemm_out)

    def gelu(x: torch.Tensor) -> torch.Tensor:
        if r.tanh_gelu:
            return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
        return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))

    def stream(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(what the next GEMM reads, what the residual adds)."""
        return _fp16(x, r.gemm_in or r.residual), _fp16(x, r.residual)

    emb = "bert.embeddings."
    x = (p[emb + "word_embeddings.weight"][ids] + p[emb + "position_embeddings.weight"][:length]
         + p[emb + "token_type_embeddings.weight"][seg])
    x_in, x_res = stream(layernorm(x, emb + "LayerNorm"))
    for i in range(cfg.num_hidden_layers):
        pre = f"bert.encoder.layer.{i}."
        q, k, v = (linear(x_in, pre + f"attention.self.{n}").view(batch, length, heads, d).transpose(1, 2)
                   for n in ("query", "key", "value"))
        probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), -1)
        att = _fp16((_fp16(probs, r.probs) @ v).transpose(1, 2).reshape(batch, length, hidden), r.gemm_out)
        t = _fp16(linear(att, pre + "attention.output.dense") + x_res, r.residual)
        a_in, a_res = stream(layernorm(t, pre + "attention.output.LayerNorm"))
        f = _fp16(gelu(linear(a_in, pre + "intermediate.dense")), r.gemm_out)
        t = _fp16(linear(f, pre + "output.dense") + a_res, r.residual)
        x_in, x_res = stream(layernorm(t, pre + "output.LayerNorm"))
    return x_res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="bert-base", choices=sorted(random_bert.SHAPES))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--gain", type=float, default=2.0, help="weight scale of the random model (check.py: 2)")
    args = ap.parse_args(argv)
    with torch.no_grad():
        return _report(args)


def _report(args: argparse.Namespace) -> int:
    model = random_bert.make_model(args.shape, vocab=2000, seed=args.seed, gain=args.gain)
    g = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, 2000, (args.batch, args.seq), generator=g)
    seg = torch.randint(0, 2, (args.batch, args.seq), generator=g)
    ref = encoder(model, ids, seg, Rounding())
    hf = model.double()(input_ids=ids, token_type_ids=seg, output_hidden_states=True).hidden_states[-1]
    agree = relative_error(ref, hf)
    if agree > 1e-12:
        raise SystemExit(f"the emulated forward disagrees with transformers' float64 forward ({agree:.1e})")
    print(f"{args.shape}, gain {args.gain}, {args.batch} x {args.seq} tokens: relative L2 error of the last hidden "
          f"states vs float64 (emulated forward = transformers' to {agree:.0e})")
    for name, r in ROWS.items():
        out = encoder(model, ids, seg, r)
        print(f"  {name:44s} {relative_error(out, ref):.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
