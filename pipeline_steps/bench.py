"""Stage ``bench``: our engine against HF eager / SDPA / torch.compile, side by side in one process.

On a GPU (CUDA build of libet and a visible device): HF ``transformers`` BERT eager, HF with SDPA,
``torch.compile(mode="max-autotune")`` of the SDPA model and libet's CUDA engine (dense and at each
sweep sparsity, padded and padding-free) on the grid batch {1, 8, 32, 128} x sequence {64, 128, 256,
512} for BERT-base and BERT-large shapes (random weights, same inputs for every system), and the
pipeline's own models on their real dev-set lengths (the first ``batch`` dev examples, in order): the
HF systems run the dense fine-tuned model (pruned weights are dense matrices to them, so the same
speed), libet runs its dense export and every retrained sparsity. Each measurement: warm-up, CUDA events,
median of >= 50 runs, inputs rotated, repeated twice (the spread shows the noise); the device's
GEMM ceiling and copy bandwidth are measured in the same run, so every row carries achieved TFLOP/s
and its ratio to the floor (FLOPs / ceiling).

On a CPU-only machine the stage runs a small grid (libet's CPU backend vs HF eager on the CPU, the
pipeline's own models) and says that GPU numbers need a GPU.

Outputs in ``--out-dir``: bench.csv, bench.json, metrics.json (``speedup_vs_compile`` and
``speedup_vs_eager`` at the headline shape), PNG plots; with ``--benchmarks-md`` also the repo's
BENCHMARKS.md (command, device, versions, date). ``--standalone`` skips MLflow (for a GPU machine
without the pipeline's tracking store).
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from tqdm import tqdm

from . import stage, tracking

HEADLINE = ("bert-base", 32, 128)
PIPELINE_MODEL = "pipeline"  # model name of the pipeline's rows on a GPU (dev-set lengths)
PIPELINE_HEADLINE_BATCH = 32
GPU_BATCHES = (1, 8, 32, 128)
GPU_SEQS = (64, 128, 256, 512)
CPU_BATCHES = (1, 8)
CPU_SEQS = (32, 64)
N_ROTATE = 4  # input sets cycled through by the timed runs of the PyTorch systems
LINESTYLES = ("-", "--", ":", "-.")  # latency plot: one per sparsity (colour: one per system)
MIN_ACCURACY_SPAN = 0.1  # accuracy plot: the y axis spans at least this much


# ----------------------------------------------------------------------------- timing and ceilings
def time_runs(fn: Callable[[Any], Any], inputs: list[Any], warmup: int, iters: int, cuda: bool) -> np.ndarray:
    """Milliseconds of each of ``iters`` calls ``fn(inputs[i % len])`` after ``warmup`` untimed calls
    (CUDA events around each call on the GPU, a monotonic clock on the CPU)."""
    import torch

    for i in range(warmup):
        fn(inputs[i % len(inputs)])
    out = np.empty(iters, dtype=np.float64)
    if cuda:
        events = [torch.cuda.Event(enable_timing=True) for _ in range(iters + 1)]
        torch.cuda.synchronize()
        for i in range(iters):
            events[i].record()
            fn(inputs[i % len(inputs)])
        events[iters].record()
        torch.cuda.synchronize()
        for i in range(iters):
            out[i] = events[i].elapsed_time(events[i + 1])
    else:
        for i in range(iters):
            t0 = time.perf_counter()
            fn(inputs[i % len(inputs)])
            out[i] = (time.perf_counter() - t0) * 1e3
    return out


def gemm_ceiling_tflops(n: int = 8192, iters: int = 20) -> float:
    """Measured fp16 tensor-core GEMM rate (TFLOP/s) of torch.matmul on random n x n x n operands."""
    import torch

    a = [torch.randn(n, n, device="cuda", dtype=torch.float16) for _ in range(2)]
    b = [torch.randn(n, n, device="cuda", dtype=torch.float16) for _ in range(2)]
    ms = time_runs(lambda ab: torch.matmul(*ab), list(zip(a, b)), 5, iters, cuda=True)
    return 2.0 * n ** 3 / (float(np.median(ms)) * 1e-3) / 1e12


def copy_bandwidth_gbs(nbytes: int = 1 << 31, iters: int = 20) -> float:
    """Measured device-to-device copy bandwidth (GB/s, bytes read + bytes written)."""
    import torch

    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda").random_(0, 255)
    dst = torch.empty_like(src)
    ms = time_runs(lambda _: dst.copy_(src), [None], 3, iters, cuda=True)
    return 2.0 * nbytes / (float(np.median(ms)) * 1e-3) / 1e9


# ----------------------------------------------------------------------------- work counts
@dataclass(frozen=True)
class ModelDims:
    layers: int
    hidden: int
    heads: int
    intermediate: int

    @classmethod
    def from_info(cls, info: dict) -> "ModelDims":
        return cls(info["layers"], info["hidden"], info["heads"], info["intermediate"])


def forward_flops(d: ModelDims, lengths: np.ndarray, padded: bool, density: float = 1.0) -> float:
    """Multiply-add FLOPs (x2) of the encoder for a batch: linear layers (scaled by the kept-weight
    density) over the tokens computed, plus Q.K^T and P.V over each sequence's (or the padded) length."""
    lengths = np.asarray(lengths, dtype=np.float64)
    rows = len(lengths) * lengths.max() if padded else lengths.sum()
    seq_sq = len(lengths) * lengths.max() ** 2 if padded else float(np.sum(lengths ** 2))
    linear = 2.0 * rows * (4 * d.hidden ** 2 + 2 * d.hidden * d.intermediate) * density
    attention = 4.0 * seq_sq * d.hidden
    return d.layers * (linear + attention)


# ----------------------------------------------------------------------------- systems
def padded_inputs(tokens: np.ndarray, segments: np.ndarray, lengths: np.ndarray, device) -> dict:
    """HF inputs (ids, token types, attention mask) of a packed ragged batch."""
    import torch

    b, L = len(lengths), int(lengths.max())
    ids = np.zeros((b, L), dtype=np.int64)
    seg = np.zeros((b, L), dtype=np.int64)
    mask = np.zeros((b, L), dtype=np.int64)
    off = 0
    for i, n in enumerate(lengths):
        ids[i, :n], seg[i, :n], mask[i, :n] = tokens[off:off + n], segments[off:off + n], 1
        off += n
    return {k: torch.from_numpy(v).to(device) for k, v in
            (("input_ids", ids), ("token_type_ids", seg), ("attention_mask", mask))}


def random_batch(rng: np.random.Generator, lengths: np.ndarray, vocab: int) -> tuple[np.ndarray, np.ndarray]:
    total = int(lengths.sum())
    return rng.integers(0, vocab, total, dtype=np.int32), rng.integers(0, 2, total, dtype=np.int32)


@dataclass
class Measure:
    """One system on one batch shape: two repetitions of ``iters`` timed runs."""

    ms: list[np.ndarray]

    @property
    def median(self) -> float:
        return float(np.median(self.ms[0]))

    def row(self) -> dict[str, float]:
        a, b = (float(np.median(m)) for m in self.ms)
        return {"ms_median": a, "ms_median_repeat": b, "ms_p10": float(np.percentile(self.ms[0], 10)),
                "ms_p90": float(np.percentile(self.ms[0], 90)), "noise_pct": 100.0 * abs(a - b) / min(a, b),
                "runs": int(self.ms[0].size)}


def measure_torch(model, batches: list[dict], warmup: int, iters: int, cuda: bool) -> Measure:
    import torch

    with torch.inference_mode():
        fn = lambda inp: model(**inp)  # noqa: E731
        return Measure([time_runs(fn, batches, warmup, iters, cuda) for _ in range(2)])


def measure_engine(engine, tokens, segments, lengths, padded: bool, warmup: int, iters: int) -> Measure:
    return Measure([np.asarray(engine.benchmark(tokens, lengths, segments, padded=padded, warmup=warmup,
                                                iters=iters), dtype=np.float64) for _ in range(2)])


# ----------------------------------------------------------------------------- the grid
@dataclass
class Ctx:
    lib: Path
    cuda: bool
    device: Any
    warmup: int
    iters: int
    ceiling_tflops: float
    deadline: float
    rows: list[dict]
    work: Path
    compile_shapes: set
    skipped: list[str]

    def add(self, base: dict, m: Measure, flops: float) -> None:
        row = {**base, **m.row(), "gflop": flops / 1e9, "tflops": flops / (m.median * 1e-3) / 1e12}
        if self.cuda:
            floor_ms = flops / (self.ceiling_tflops * 1e12) * 1e3
            row.update(floor_ms=floor_ms, ratio_to_floor=m.median / floor_ms,
                       fraction_of_peak=row["tflops"] / self.ceiling_tflops)
        self.rows.append(row)
        print(f"  {row['model']:>12s} b{row['batch']:<4d} s{row['seq']:<4d} {row['lengths']:>7s} "
              f"{row['system']:>22s} {row['ms_median']:9.3f} ms (repeat {row['ms_median_repeat']:.3f}) "
              f"{row['tflops']:7.1f} TFLOP/s", flush=True)

    def out_of_time(self, what: str) -> bool:
        if time.monotonic() > self.deadline:
            self.skipped.append(what)
            return True
        return False


class Systems:
    """Every system benchmarked on one model, loaded once: the HF variants on the bench device and one
    libet engine per exported manifest (sparsity -> manifest)."""

    def __init__(self, ctx: "Ctx", model_fp32, manifests: dict[float, Path]) -> None:
        import torch

        from .engine import Engine

        self.ctx = ctx
        cfg = model_fp32.config
        self.dims = ModelDims(cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size)
        self.vocab = cfg.vocab_size
        dtype = torch.float16 if ctx.cuda else torch.float32
        self.hf = {"hf-eager": _with_attention(model_fp32, "eager").to(ctx.device, dtype)}
        if ctx.cuda:
            self.hf["hf-sdpa"] = _with_attention(model_fp32, "sdpa").to(ctx.device, dtype)
        self.compiled = None
        self.engines = {s: Engine(ctx.lib, m, backend="cuda" if ctx.cuda else "cpu") for s, m in manifests.items()}

    def compiled_sdpa(self):
        """torch.compile(mode="max-autotune") of the SDPA model (CUDA graphs on), created on first use."""
        import torch

        if self.compiled is None:
            self.compiled = torch.compile(self.hf["hf-sdpa"], mode="max-autotune")
        return self.compiled

    def close(self) -> None:
        import torch

        for eng in self.engines.values():
            eng.close()
        self.hf.clear()
        self.compiled = None
        if self.ctx.cuda:
            torch.cuda.empty_cache()


def _with_attention(model, impl: str):
    import copy

    m = copy.deepcopy(model)
    m.set_attn_implementation(impl)
    return m.eval()


def bench_shape(systems: Systems, name: str, batch: int, lengths: np.ndarray, kind: str, rng: np.random.Generator,
                hf: bool = True, sparsities: list[float] | None = None, compile_hf: bool = False) -> None:
    """The systems on one batch of ``lengths``: HF models (when ``hf``; plus torch.compile when
    ``compile_hf`` on a GPU) and the engines of ``sparsities`` (all when None), padding-free and, for
    ragged lengths, padded."""
    ctx = systems.ctx
    seq = int(lengths.max())
    sets = [random_batch(rng, lengths, systems.vocab) for _ in range(N_ROTATE)]
    base = {"model": name, "batch": batch, "seq": seq, "lengths": kind, "tokens": int(lengths.sum())}
    if hf and not ctx.out_of_time(f"{name} b{batch} s{seq} {kind} hf"):
        inputs = [padded_inputs(t, s, lengths, ctx.device) for t, s in sets]
        todo = list(systems.hf.items())
        if compile_hf and ctx.cuda:
            todo.append(("hf-compile-max-autotune", systems.compiled_sdpa()))
        for system, model in todo:
            warmup = 3 * ctx.warmup if "compile" in system else ctx.warmup
            ctx.add({**base, "system": system, "sparsity": 0.0}, measure_torch(model, inputs, warmup, ctx.iters, ctx.cuda),
                    forward_flops(systems.dims, lengths, padded=True))
    tokens, segments = sets[0]
    for sparsity, eng in sorted(systems.engines.items()):
        if sparsities is not None and sparsity not in sparsities:
            continue
        if ctx.out_of_time(f"{name} b{batch} s{seq} {kind} et s{sparsity:g}"):
            continue
        density = eng.info["kept_params"] / max(eng.info["total_params"], 1)
        for padded in (False, True):
            if kind == "uniform" and padded:
                continue  # identical to padding-free when every length is the same
            m = measure_engine(eng, tokens, segments, lengths, padded, ctx.warmup, ctx.iters)
            ctx.add({**base, "system": f"et-{eng.backend}-{'padded' if padded else 'packed'}", "sparsity": sparsity}, m,
                    forward_flops(systems.dims, lengths, padded, density))


def random_model_manifests(ctx: Ctx, shape: str, sparsities: list[float]) -> tuple[Any, dict[float, Path]]:
    """A random-weight HF model of ``shape`` and its libet exports, dense and pruned at each sparsity
    (random 16x16 tile masks on every encoder linear weight)."""
    from . import random_bert

    model = random_bert.make_model(shape, seed=11)
    manifests = {0.0: random_bert.export(model, random_bert.random_pruning(model, 1.0), ctx.work / f"{shape}-dense",
                                         dtype="float16")}
    for s in sparsities:
        pruned = random_bert.make_model(shape, seed=11)
        masks = random_bert.random_pruning(pruned, 1.0 - s, seed=int(s * 1000))
        manifests[s] = random_bert.export(pruned, masks, ctx.work / f"{shape}-s{s:g}", dtype="float16")
        del pruned
    return model, manifests


def dev_batches(model_dir: Path, data_dir: Path, max_length: int, batch: int, n_batches: int) -> list[np.ndarray]:
    """Real dev-set token lengths of the pipeline's model, cut into batches."""
    from . import glue, modeling

    enc = modeling.encode(modeling.load_tokenizer(model_dir), glue.read_split(data_dir, "dev"), max_length)
    lengths = np.asarray([len(x) for x in enc.input_ids], dtype=np.int32)
    return [lengths[i:i + batch] for i in range(0, min(len(lengths), batch * n_batches), batch) if
            len(lengths[i:i + batch]) == batch]


def pipeline_systems(ctx: "Ctx", manifests: list[Path]) -> Iterator[tuple[str, Path, Systems]]:
    """(name, HF model folder, systems) of each of the pipeline's retrained models that exists."""
    from . import modeling

    for manifest in manifests:
        sparsity = float(manifest.parent.name.lstrip("s"))
        model_dir = manifest.parents[2] / "retrain" / manifest.parent.name / "model"
        if not model_dir.is_dir():
            ctx.skipped.append(f"{manifest}: no retrained model folder {model_dir}")
            continue
        systems = Systems(ctx, modeling.load_classifier(model_dir).float().eval(), {sparsity: manifest})
        try:
            yield f"pipeline-s{sparsity:g}", model_dir, systems
        finally:
            systems.close()


def pipeline_manifests(ctx: "Ctx", finetune_model: Path, manifests: list[Path]) -> tuple[Any, dict[float, Path]]:
    """The dense fine-tuned model (float32) and libet manifests by sparsity: its own dense float16 export
    (0.0) and the pipeline's exported retrained models (sparsity from their ``s<sparsity>`` folders)."""
    from . import modeling, random_bert
    from .tiles import ModelMasks

    model = modeling.load_classifier(finetune_model).float().eval()
    out = {0.0: random_bert.export(model, ModelMasks({}, {}), ctx.work / "pipeline-dense", dtype="float16")}
    for manifest in manifests:
        out[float(manifest.parent.name.lstrip("s"))] = manifest
    return model, out


def run_pipeline_models(ctx: "Ctx", finetune_model: Path | None, manifests: list[Path], data_dir: Path | None,
                        max_length: int, batches: list[int], compile_batches: set[int],
                        rng: np.random.Generator) -> None:
    """GPU: the pipeline's models on batches of the dev set's first examples (real lengths): HF eager,
    SDPA (and torch.compile at ``compile_batches``) of the dense fine-tuned model, libet on its dense
    export and on every retrained sparsity, padding-free and padded."""
    missing = [what for what, value in (("--finetune-model", finetune_model), ("--data-dir", data_dir)) if value is None]
    if missing:
        ctx.skipped.append(f"pipeline models: no {' / '.join(missing)}")
        return
    systems = Systems(ctx, *pipeline_manifests(ctx, finetune_model, manifests))
    try:
        for batch in tqdm(batches, desc="bench pipeline", unit="batch"):
            for lengths in dev_batches(finetune_model, data_dir, max_length, batch, 1):
                bench_shape(systems, PIPELINE_MODEL, batch, lengths, "dev", rng, compile_hf=batch in compile_batches)
    finally:
        systems.close()


# ----------------------------------------------------------------------------- outputs
def headline_shape(rows: list[dict], cuda: bool) -> tuple[str, int, int | None, str] | None:
    """(model, batch, seq or None for any, lengths kind) of the headline: on a GPU BERT-base (random
    weights) batch 32 x 128 when measured, else the pipeline's models at batch 32 of dev-set lengths; on
    the CPU the pipeline's first model at the largest CPU grid shape."""
    if cuda:
        if any((r["model"], r["batch"], r["seq"], r["lengths"]) == (*HEADLINE, "uniform") for r in rows):
            return (*HEADLINE, "uniform")
        batches = sorted({r["batch"] for r in rows if r["model"] == PIPELINE_MODEL})
        if not batches:
            return None
        batch = PIPELINE_HEADLINE_BATCH if PIPELINE_HEADLINE_BATCH in batches else batches[-1]
        return PIPELINE_MODEL, batch, None, "dev"
    names = sorted({r["model"] for r in rows})
    return (names[0], max(CPU_BATCHES), max(CPU_SEQS), "uniform") if names else None


def headline_rows(rows: list[dict], cuda: bool) -> tuple[tuple[str, int, int | None, str], list[dict]] | None:
    """The headline shape (:func:`headline_shape`) and the rows measured at it (None: no headline)."""
    shape = headline_shape(rows, cuda)
    if shape is None:
        return None
    name, b, s, kind = shape
    return shape, [r for r in rows if (r["model"], r["batch"], r["lengths"]) == (name, b, kind)
                   and s in (None, r["seq"])]


def headline_metrics(rows: list[dict], cuda: bool) -> dict[str, float]:
    """At the headline shape (:func:`headline_shape`): speedups of our dense padding-free engine over
    the PyTorch systems (``speedup_vs_compile`` / ``_eager`` / ``_sdpa``, ``headline_ms``) and, for
    each pruned sparsity s measured there, ``speedup_vs_dense_s<s>`` (over our dense engine) and the
    speedups of the pruned engine over the PyTorch systems (``speedup_vs_compile_s<s>``, ...)."""
    out: dict[str, float] = {"gpu": float(cuda)}
    headline = headline_rows(rows, cuda)
    if headline is None:
        return out
    (_, b, _, _), at = headline
    ours_system = "et-cuda-packed" if cuda else "et-cpu-packed"

    def pick(system: str, sparsity: float | None) -> float | None:
        return next((r["ms_median"] for r in at if r["system"] == system
                     and (sparsity is None or r["sparsity"] == sparsity)), None)

    refs = {key: pick(system, 0.0) for key, system in (("compile", "hf-compile-max-autotune"), ("eager", "hf-eager"),
                                                       ("sdpa", "hf-sdpa"))}
    ours = pick(ours_system, 0.0 if cuda else None)
    if ours:
        out["headline_ms"] = ours
        out["headline_batch"] = float(b)
        out.update({f"speedup_vs_{key}": ref / ours for key, ref in refs.items() if ref})
    for sparsity in sorted({r["sparsity"] for r in at if r["system"] == ours_system and r["sparsity"] > 0}):
        pruned = pick(ours_system, sparsity)
        tag = f"s{sparsity:g}"
        if ours and cuda:
            out[f"speedup_vs_dense_{tag}"] = ours / pruned
        out.update({f"speedup_vs_{key}_{tag}": ref / pruned for key, ref in refs.items() if ref and cuda})
    return out


def write_plots(rows: list[dict], accuracy: dict[float, float], out_dir: Path, cuda: bool) -> list[Path]:
    """latency vs batch, speedup vs sparsity, accuracy vs sparsity, fraction of peak."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    if cuda:
        model, _, seq, kind = headline_shape(rows, cuda) or (HEADLINE[0], 0, HEADLINE[2], "uniform")
    else:
        model, seq, kind = None, max(r["seq"] for r in rows), "uniform"
    sel = [r for r in rows if r["lengths"] == kind and seq in (None, r["seq"]) and model in (None, r["model"])]
    what = f"{model or 'pipeline model'} " + ("(dev-set lengths)" if seq is None else f"seq {seq}")
    fig, ax = plt.subplots(figsize=(6, 4))
    systems = sorted({r["system"] for r in sel})
    sparsities = sorted({r["sparsity"] for r in sel})
    for system, sparsity in sorted({(r["system"], r["sparsity"]) for r in sel}):
        pts = sorted((r["batch"], r["ms_median"]) for r in sel if (r["system"], r["sparsity"]) == (system, sparsity))
        ax.plot(*zip(*pts), marker="o", color=f"C{systems.index(system)}",
                linestyle=LINESTYLES[sparsities.index(sparsity) % len(LINESTYLES)],
                label=system + (f" {sparsity:.0%} sparse" if sparsity else ""))
    ax.set(yscale="log", ylabel="median ms per forward (log scale)", title=f"{what}: latency vs batch")
    _plain_log_axis(ax.yaxis)
    _batch_axis(ax, sel)
    ax.legend(fontsize=7)
    paths.append(_save(fig, out_dir / "latency_vs_batch.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    packed = [r for r in rows if r["system"].endswith("packed")]
    for group in sorted({(r["model"], r["batch"], r["seq"], r["lengths"]) for r in packed}):
        pts = {r["sparsity"]: r["ms_median"] for r in packed if (r["model"], r["batch"], r["seq"], r["lengths"]) == group}
        if 0.0 in pts and len(pts) > 1:
            xs = sorted(pts)
            mdl, b, s, k = group
            ax.plot(xs, [pts[0.0] / pts[x] for x in xs], marker="o",
                    label=f"{mdl} b{b} " + ("dev lengths" if k == "dev" else f"s{s}"))
    ax.set(xlabel="tile sparsity", ylabel="speedup over our dense engine (> 1: faster)",
           title="speedup vs sparsity (padding-free engine)")
    if ax.lines:
        ax.axhline(1.0, color="0.4", linestyle="--", linewidth=1, label="dense (1.0)")
        ax.legend(fontsize=6)
    else:
        ax.text(0.5, 0.5, "no dense baseline of the same model in this run", ha="center", transform=ax.transAxes)
    paths.append(_save(fig, out_dir / "speedup_vs_sparsity.png"))

    if accuracy:
        fig, ax = plt.subplots(figsize=(6, 4))
        xs = sorted(accuracy)
        ax.plot(xs, [accuracy[x] for x in xs], marker="o")
        for x in xs:
            ax.annotate(f"{accuracy[x]:.3f}", (x, accuracy[x]), textcoords="offset points", xytext=(0, 6),
                        ha="center", fontsize=8)
        low, high = min(accuracy.values()), max(accuracy.values())
        pad = max(0.0, MIN_ACCURACY_SPAN - (high - low)) / 2 + 0.01  # a small drop is not drawn as a collapse
        ax.set_ylim(low - pad, high + pad)
        ax.set(xlabel="tile sparsity", ylabel="dev accuracy", title="accuracy vs sparsity (pipeline)")
        paths.append(_save(fig, out_dir / "accuracy_vs_sparsity.png"))

    if cuda:
        fig, ax = plt.subplots(figsize=(6, 4))
        for system in sorted({r["system"] for r in sel}):
            pts = sorted((r["batch"], r["fraction_of_peak"]) for r in sel if r["system"] == system and
                         r["sparsity"] == 0.0)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=system)
        ax.set(ylabel="achieved / measured GEMM ceiling", title=f"{what}: fraction of peak (dense)")
        _batch_axis(ax, sel)
        fig.text(0.01, 0.01, "FLOPs as executed: the padded systems (HF, et-cuda-padded) count padding tokens",
                 fontsize=7, color="0.3")
        ax.legend(fontsize=7)
        paths.append(_save(fig, out_dir / "fraction_of_peak.png"))
    return paths


def _plain_log_axis(axis) -> None:
    """Tick labels of a log axis as plain numbers (0.2, 3) instead of powers of ten."""
    from matplotlib.ticker import FuncFormatter

    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))


def _batch_axis(ax, rows: list[dict]) -> None:
    """Log-scale batch axis ticked at the measured batch sizes."""
    batches = sorted({r["batch"] for r in rows})
    ax.set(xscale="log", xlabel="batch size")
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.xaxis.set_minor_formatter("")


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def benchmarks_markdown(meta: dict, rows: list[dict], metrics: dict, plots: list[str], plots_dir: str) -> str:
    """BENCHMARKS.md from a GPU run (every number from ``rows`` / ``meta``); ``plots`` (file names) are
    linked under ``plots_dir``, where the run's PNGs are copied next to BENCHMARKS.md."""
    lines = ["# Benchmarks", "", "Generated by `pipeline_steps/bench.py` from one GPU run; do not edit by hand.", "",
             f"- command: `{meta['command']}`", f"- commit: {meta.get('commit', 'unknown')}",
             f"- device: {meta['device']}",
             f"- torch {meta['torch']}, CUDA {meta['cuda_runtime']}, transformers {meta['transformers']}",
             f"- date (UTC): {meta['date']}",
             f"- measured ceilings: fp16 GEMM {meta['gemm_tflops']:.0f} TFLOP/s, copy {meta['copy_gbs']:.0f} GB/s",
             f"- timing: {meta['warmup']} warm-up, median of {meta['iters']} runs (CUDA events), each measured twice",
             ""]
    lines += ["## Headline (" + " ".join(map(str, HEADLINE)) + ", fp16, dense, padding-free)", ""]
    lines += [f"- {k}: {v:.3f}" for k, v in sorted(metrics.items())]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{Path(name).stem.replace('_', ' ')}]({plots_dir}/{name})" for name in plots]
    lines += ["", "## All rows", "",
              "| model | batch | seq | lengths | system | sparsity | ms (median) | ms (repeat) | TFLOP/s | x floor |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['batch']} | {r['seq']} | {r['lengths']} | {r['system']} | "
                     f"{r['sparsity']:g} | {r['ms_median']:.3f} | {r['ms_median_repeat']:.3f} | {r['tflops']:.1f} | "
                     f"{r.get('ratio_to_floor', float('nan')):.2f} |")
    if meta.get("skipped"):
        lines += ["", "Skipped (time budget): " + "; ".join(meta["skipped"])]
    return "\n".join(lines) + "\n"


def accuracy_by_sparsity(finetune: Path | None, retrain: list[Path]) -> dict[float, float]:
    out = {}
    if finetune and finetune.is_file():
        out[0.0] = float(stage.read_json(finetune).get("accuracy", float("nan")))
    for p in retrain:
        m = stage.read_json(p)
        if "accuracy" in m:
            out[float(m.get("sparsity", p.parent.name.lstrip("s")))] = float(m["accuracy"])
    return out


# ----------------------------------------------------------------------------- main
class _NoTracking:
    """Stands in for an MLflow run in ``--standalone`` mode."""

    def log_metrics(self, *a, **k) -> None: ...
    def log_artifact(self, *a, **k) -> None: ...
    def set_tags(self, *a, **k) -> None: ...


def main(argv: list[str] | None = None) -> int:
    """Run the stage."""
    p = stage.base_parser(__doc__.splitlines()[0])
    p.add_argument("--lib", type=Path, required=True, help="built libet.so")
    p.add_argument("--manifests", type=Path, nargs="*", default=[], help="the pipeline's exported models")
    p.add_argument("--data-dir", type=Path, default=None, help="prepared data (dev.tsv) for real lengths")
    p.add_argument("--finetune-metrics", type=Path, default=None)
    p.add_argument("--retrain-metrics", type=Path, nargs="*", default=[])
    p.add_argument("--finetune-model", type=Path, default=None,
                   help="the dense fine-tuned model folder (GPU: HF systems and our dense engine on the dev lengths)")
    p.add_argument("--pipeline-batches", default=",".join(map(str, GPU_BATCHES)),
                   help="GPU: batch sizes of the pipeline's models (the dev set's first examples)")
    p.add_argument("--pipeline-compile-batches", default=str(PIPELINE_HEADLINE_BATCH),
                   help="GPU: pipeline batches where torch.compile(max-autotune) is measured (minutes each)")
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--shapes", default="bert-base,bert-large", help="random-weight shapes benchmarked on a GPU")
    p.add_argument("--sparsities", default="0.5,0.8", help="tile sparsities of the random-weight models")
    p.add_argument("--batches", default=",".join(map(str, GPU_BATCHES)))
    p.add_argument("--seqs", default=",".join(map(str, GPU_SEQS)))
    p.add_argument("--compile-shapes", default="bert-base:32:128,bert-base:1:128",
                   help="model:batch:seq where torch.compile(max-autotune) is measured (each costs minutes)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--budget-s", type=float, default=540.0, help="stop starting new rows after this many seconds")
    p.add_argument("--standalone", action="store_true", help="no MLflow (e.g. on a bare GPU machine)")
    p.add_argument("--benchmarks-md", type=Path, default=None, help="also write this BENCHMARKS.md (GPU runs)")
    p.add_argument("--plots-dir", default="docs/benchmarks",
                   help="where BENCHMARKS.md links the run's PNG plots (relative to BENCHMARKS.md)")
    args = p.parse_args(argv)
    stage.setup_runtime(args.threads, args.seed)
    if args.iters < 1 or args.warmup < 0:
        p.error("--iters must be >= 1 and --warmup >= 0")
    try:
        pipeline_batches, compile_batches = _ints(args.pipeline_batches), set(_ints(args.pipeline_compile_batches))
    except ValueError:
        p.error(f"--pipeline-batches {args.pipeline_batches!r} / --pipeline-compile-batches "
                f"{args.pipeline_compile_batches!r}: comma-separated integers expected")
    if not args.lib.is_file():
        p.error(f"--lib {args.lib}: no such file (run build_lib)")
    for m in args.manifests:
        if not m.is_file():
            p.error(f"--manifests: {m} does not exist")

    import torch

    from .engine import cuda_available

    cuda = torch.cuda.is_available() and cuda_available(args.lib)
    if not cuda:
        print("bench: no usable GPU (torch.cuda.is_available()="
              f"{torch.cuda.is_available()}, libet CUDA backend={cuda_available(args.lib)}): running the small CPU "
              "grid (libet CPU backend vs HF eager on the CPU). GPU numbers need a GPU.", flush=True)
    start = time.monotonic()
    tracker = contextlib.nullcontext(_NoTracking()) if args.standalone else _stage_run(args)
    with tracker as run, stage.atomic_dir(args.out_dir) as tmp:
        work = tmp / "models"
        work.mkdir()
        ctx = Ctx(lib=args.lib, cuda=cuda, device=torch.device("cuda" if cuda else "cpu"),
                  warmup=args.warmup if cuda else 2, iters=args.iters if cuda else 10, ceiling_tflops=0.0,
                  deadline=start + args.budget_s, rows=[], work=work,
                  compile_shapes={(s.split(":")[0], int(s.split(":")[1]), int(s.split(":")[2]))
                                  for s in args.compile_shapes.split(",") if s},
                  skipped=[])
        meta: dict[str, Any] = {"command": " ".join(["python -m pipeline_steps.bench", *(argv or sys.argv[1:])]),
                                "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
                                "torch": torch.__version__, "cuda_runtime": torch.version.cuda,
                                "transformers": _version("transformers"), "gpu": cuda,
                                "warmup": ctx.warmup, "iters": ctx.iters, "commit": tracking.git_commit()}
        rng = np.random.default_rng(args.seed)
        if cuda:
            meta["device"] = torch.cuda.get_device_name(0)
            meta["gemm_tflops"] = ctx.ceiling_tflops = gemm_ceiling_tflops()
            meta["copy_gbs"] = copy_bandwidth_gbs()
            print(f"bench: {meta['device']}: fp16 GEMM ceiling {meta['gemm_tflops']:.0f} TFLOP/s, "
                  f"copy {meta['copy_gbs']:.0f} GB/s", flush=True)
            if args.finetune_model or args.manifests:  # the pipeline's own models first (the DAG's budget)
                max_length = int(args.params.get("model", {}).get("max_seq_length", 128))
                run_pipeline_models(ctx, args.finetune_model, args.manifests, args.data_dir, max_length,
                                    pipeline_batches, compile_batches, rng)
            sparsities = [float(s) for s in args.sparsities.split(",") if s]
            for shape in [s for s in args.shapes.split(",") if s]:
                systems = Systems(ctx, *random_model_manifests(ctx, shape, sparsities))
                grid = [(s, b) for s in _ints(args.seqs) for b in _ints(args.batches)]
                try:
                    for seq, batch in tqdm(grid, desc=f"bench {shape}", unit="shape"):
                        bench_shape(systems, shape, batch, np.full(batch, seq, np.int32), "uniform", rng,
                                    compile_hf=(shape, batch, seq) in ctx.compile_shapes)
                        if shape == HEADLINE[0] and seq == HEADLINE[2]:  # ragged U[16, seq]: padded vs packed
                            ragged = rng.integers(16, seq + 1, batch).astype(np.int32)
                            bench_shape(systems, shape, batch, ragged, "ragged", rng, sparsities=[0.0])
                finally:
                    systems.close()
        else:
            meta["device"] = platform.processor() or platform.machine()
            run_cpu_grid(ctx, args.manifests, rng)
        metrics = headline_metrics(ctx.rows, cuda)
        meta["skipped"] = ctx.skipped
        accuracy = accuracy_by_sparsity(args.finetune_metrics, args.retrain_metrics)
        _write_table(ctx.rows, tmp / "bench.csv")
        stage.write_json(tmp / "bench.json", {"meta": meta, "rows": ctx.rows, "accuracy": accuracy})
        stage.write_json(tmp / "metrics.json", metrics)
        plots = write_plots(ctx.rows, accuracy, tmp, cuda) if ctx.rows else []
        import shutil

        shutil.rmtree(work)
        if args.benchmarks_md and cuda:
            args.benchmarks_md.write_text(benchmarks_markdown(meta, ctx.rows, metrics, [p.name for p in plots],
                                                              args.plots_dir))
        run.log_metrics(metrics)
        run.set_tags({"bench.device": meta["device"], "bench.gpu": cuda})
        for f in ["bench.csv", "bench.json", "metrics.json", *[p.name for p in plots]]:
            run.log_artifact(tmp / f)
    print(json.dumps(metrics, indent=1))
    if ctx.skipped:
        print(f"bench: skipped {len(ctx.skipped)} rows to stay within --budget-s {args.budget_s:g}")
    if not cuda:
        print("bench: these are CPU numbers; GPU numbers need a GPU (see BENCHMARKS.md for the last GPU run).")
    return 0


def run_cpu_grid(ctx: "Ctx", manifests: list[Path], rng: np.random.Generator) -> None:
    """CPU: the pipeline's models (libet CPU backend vs HF eager) on a small uniform grid."""
    for name, _, systems in pipeline_systems(ctx, manifests):
        for seq, batch in tqdm([(s, b) for s in CPU_SEQS for b in CPU_BATCHES], desc=f"bench {name}", unit="shape"):
            bench_shape(systems, name, batch, np.full(batch, seq, np.int32), "uniform", rng)


def _stage_run(args):
    return tracking.stage_run(args.run_dir, "bench", args.params, tags={"gpu_required_for_gpu_numbers": "true"})


def _ints(text: str) -> list[int]:
    """``"1,8,32"`` -> [1, 8, 32] (empty items ignored)."""
    return [int(x) for x in text.split(",") if x.strip()]


def _write_table(rows: list[dict], path: Path) -> None:
    keys = sorted({k for r in rows for k in r}, key=lambda k: (k not in ("model", "batch", "seq", "lengths",
                                                                          "system", "sparsity"), k))
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def _version(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # noqa: BLE001 - a missing package is reported as such
        return "not installed"


if __name__ == "__main__":
    sys.exit(main())
