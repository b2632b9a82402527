"""Stage ``infer``: the dev split through libet (cffi) and et_infer, checked against the PyTorch model.

The dev examples are tokenized without padding and run in ragged batches of ``infer.batch_size``
through the library (:class:`~pipeline_steps.engine.Engine`), and the same inputs, written as
``.npy`` files, through the ``et_infer`` executable; both must give the same logits. The PyTorch
model (``--model-dir``) runs the same inputs: the stage records the largest logit difference and the
fraction of equal predictions, the GLUE metrics of the library's logits, and the latency (median
per batch) and throughput of the library.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .engine import OMP_ENV, Engine, EngineError  # first: sets the OpenMP wait policy before torch loads libgomp  # isort: skip
from . import glue, modeling, stage, tracking

# Largest |et_infer - library| logit difference, relative to the logit scale. Both call the same
# library on the same batches: the CPU backend is deterministic (measured: equal); the CUDA backend
# may reduce in a different order between runs.
EXE_TOLERANCE = {"cpu": 1e-6, "cuda": 1e-3}


class InferError(RuntimeError):
    """The library, the executable and the PyTorch model disagree, or the executable failed."""


def pack(encoded: modeling.EncodedSplit) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Packed int32 token ids, segment ids and lengths of an encoded split."""
    tokens = np.concatenate(encoded.input_ids).astype(np.int32)
    segments = np.concatenate(encoded.token_type_ids).astype(np.int32)
    return tokens, segments, encoded.lengths.astype(np.int32)


def run_library(engine: Engine, tokens: np.ndarray, segments: np.ndarray, lengths: np.ndarray,
                batch_size: int) -> tuple[np.ndarray, list[float]]:
    """Logits of all sequences in ragged batches, and each batch's wall time in ms."""
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
    logits, times = [], []
    for b0 in tqdm(range(0, lengths.size, batch_size), desc="infer (libet)", unit="batch"):
        b1 = min(b0 + batch_size, lengths.size)
        t0, t1 = offsets[b0], offsets[b1]
        start = time.perf_counter()
        logits.append(engine.forward(tokens[t0:t1], lengths[b0:b1], segments[t0:t1]))
        times.append((time.perf_counter() - start) * 1000.0)
    return np.concatenate(logits), times


def run_executable(exe: Path, manifest: Path, tokens: np.ndarray, segments: np.ndarray, lengths: np.ndarray,
                   batch_size: int, backend: str, threads: int, work_dir: Path) -> tuple[np.ndarray, dict[str, float]]:
    """Logits of et_infer on the same inputs (written as .npy files) and its timing line."""
    files = {name: work_dir / f"{name}.npy" for name in ("tokens", "segments", "lengths", "exe_logits")}
    np.save(files["tokens"], tokens)
    np.save(files["segments"], segments)
    np.save(files["lengths"], lengths)
    cmd = [str(exe), str(manifest), str(manifest.parent), "--tokens", str(files["tokens"]), "--lengths",
           str(files["lengths"]), "--segments", str(files["segments"]), "--chunk", str(batch_size),
           "--backend", backend, "--threads", str(threads), "--iters", "5", "--warmup", "1",
           "--out", str(files["exe_logits"])]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**OMP_ENV, **os.environ})
    if proc.returncode != 0:
        raise InferError(f"et_infer failed with exit code {proc.returncode}: {proc.stderr.strip()}")
    print(proc.stdout, end="")
    timing = {}
    m = re.search(r"latency_ms: min=([\d.]+) median=([\d.]+) p90=([\d.]+)", proc.stdout)
    if m:
        timing = {"exe_latency_ms_min": float(m[1]), "exe_latency_ms": float(m[2]), "exe_latency_ms_p90": float(m[3])}
    logits = np.load(files["exe_logits"], allow_pickle=False)
    for f in files.values():
        f.unlink()
    return logits, timing


def compare(task: glue.TaskSpec, ours: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Largest |logit difference| and prediction agreement (regression: |diff| <= 1e-3 of the scale)."""
    diff = float(np.abs(ours - reference).max())
    if task.is_regression:
        scale = max(1.0, float(np.abs(reference).max()))
        agree = float(np.mean(np.abs(ours[:, 0] - reference[:, 0]) <= 1e-3 * scale))
    else:
        agree = float(np.mean(ours.argmax(axis=1) == reference.argmax(axis=1)))
    return {"max_abs_logit_diff": diff, "prediction_agreement": agree}


def main(argv: list[str] | None = None) -> int:
    """Run the stage; a library, data or consistency error prints one paragraph and exits 1."""
    p = stage.base_parser(__doc__.splitlines()[0])
    p.add_argument("--lib", type=Path, required=True, help="built libet.so")
    p.add_argument("--exe", type=Path, required=True, help="built et_infer")
    p.add_argument("--manifest", type=Path, required=True, help="weights.txt of the exported model")
    p.add_argument("--model-dir", type=Path, required=True, help="the same model as an HF folder (reference)")
    p.add_argument("--data-dir", type=Path, required=True, help="prepare_data folder (dev.tsv, task.json)")
    p.add_argument("--sparsity", type=float, default=None, help="sweep branch (for names and metrics)")
    p.add_argument("--out-dir", type=Path, required=True)
    args = p.parse_args(argv)
    stage.setup_runtime(args.threads, args.seed)
    try:
        infer(args)
    except EngineError as exc:
        print(f"infer: error: libet ({args.lib}) failed on the model of {args.manifest}: {exc}", file=sys.stderr)
        return 1
    except (InferError, FileNotFoundError, ValueError) as exc:  # ValueError: glue.DataError, modeling.ModelError
        print(f"infer: error: {exc}", file=sys.stderr)
        return 1
    return 0


def infer(args) -> None:
    """The stage body: the dev split through libet, et_infer and PyTorch; writes logits.npy and metrics.json."""
    max_len = int(args.params.get("model", {}).get("max_seq_length", 128))
    infer_cfg = args.params.get("infer", {})
    backend = infer_cfg.get("backend", "auto")
    batch_size = int(infer_cfg.get("batch_size", 32))
    name = "infer" if args.sparsity is None else f"infer[s{args.sparsity:g}]"
    with tracking.stage_run(args.run_dir, name, args.params, tags={"manifest": args.manifest}) as run:
        task = glue.read_task(args.data_dir)
        examples = glue.read_split(args.data_dir, "dev", task)
        tokenizer = modeling.load_tokenizer(args.model_dir)
        encoded = modeling.encode(tokenizer, examples, max_len, regression=task.is_regression)
        tokens, segments, lengths = pack(encoded)

        with Engine(args.lib, args.manifest, backend=backend, threads=args.threads) as engine:
            print(f"infer: backend {engine.backend} on {engine.device}; {lengths.size} sequences, "
                  f"{tokens.size} tokens, batches of {batch_size}", flush=True)
            logits, times = run_library(engine, tokens, segments, lengths, batch_size)
            info = {**engine.info, "backend": engine.backend, "device": engine.device}

        model = modeling.load_classifier(args.model_dir)
        loader = modeling.make_loader(encoded, batch_size, shuffle=False)
        torch_logits, labels = modeling.predict(model, loader, modeling.select_device("cpu"), desc="infer (torch)")
        torch_logits = torch_logits.reshape(logits.shape)

        with stage.atomic_dir(args.out_dir) as tmp:
            exe_logits, exe_timing = run_executable(args.exe, args.manifest, tokens, segments, lengths, batch_size,
                                                    backend, args.threads, tmp)
            scale = max(1.0, float(np.abs(logits).max()))
            exe_diff = float(np.abs(exe_logits - logits).max()) if exe_logits.shape == logits.shape else float("inf")
            if exe_diff > EXE_TOLERANCE.get(info["backend"], 1e-3) * scale:
                raise InferError(f"et_infer logits differ from the library's by {exe_diff:.3g} "
                                 f"(shape {exe_logits.shape} vs {logits.shape})")
            total_s = sum(times) / 1000.0
            metrics = {
                **glue.compute_metrics(task, logits, labels),
                **compare(task, logits, torch_logits),
                **{f"torch_{k}": v for k, v in glue.compute_metrics(task, torch_logits, labels).items()},
                "backend": info["backend"], "device": info["device"],
                "latency_ms": float(np.median(times)), "latency_ms_p90": float(np.percentile(times, 90)),
                "tokens_per_s": float(tokens.size / total_s) if total_s > 0 else 0.0,
                "batch_size": batch_size, "examples": int(lengths.size), "tokens": int(tokens.size),
                "exe_max_abs_diff": exe_diff, **exe_timing,
                "kept_tiles": info["kept_tiles"], "total_tiles": info["total_tiles"],
                "pruned_heads": info["pruned_heads"],
                "param_density": info["kept_params"] / info["total_params"],
            }
            if args.sparsity is not None:
                metrics["sparsity"] = args.sparsity
            np.save(tmp / "logits.npy", logits)
            stage.write_json(tmp / stage.METRICS_FILE, metrics)
        run.log_metrics(metrics)
        run.set_tags({"backend": info["backend"], "device": info["device"]})
        run.log_artifact(args.out_dir / stage.METRICS_FILE)
    summary = ", ".join(f"{k}={metrics[k]:.4g}" for k in ("accuracy", "max_abs_logit_diff", "prediction_agreement",
                                                            "latency_ms", "tokens_per_s") if k in metrics)
    print(f"infer: {info['backend']} ({info['device']}): {summary}")


if __name__ == "__main__":
    sys.exit(main())
