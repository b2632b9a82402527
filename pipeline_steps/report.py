"""Stage ``report``: collect every stage's ``metrics.json`` into ``summary.json`` and ``report.md``.

``--inputs`` is a JSON object: stage name → metrics path (a single stage) or list of paths (a sweep
stage, one per sparsity, under ``…/<stage>/s<sparsity>/``). ``summary.json`` holds each single
stage's metrics under its name, the sweep under ``sweep["<sparsity>"][stage]`` with the first sweep
entry's metrics also at ``summary[stage]``, and the MLflow ids under ``mlflow``. With a pruning
sweep, the accuracy-vs-sparsity plot is drawn. When the bench stage ran, report.md also gets its
headline table (every system at the headline shape, from ``bench.json`` beside its metrics) and its
plots. All outputs (and the bench plots) are logged to the report's MLflow run.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from . import tracking
from .stage import base_parser, read_json, setup_runtime, write_json, write_text

SWEEP_DIR = re.compile(r"^s(\d+(?:\.\d+)?)$")
PLOT_FILE = "accuracy_vs_sparsity.png"
# the bench stage's plots, in report order (its accuracy plot last: shown only when the report drew none)
BENCH_PLOTS = ("latency_vs_batch.png", "speedup_vs_sparsity.png", "fraction_of_peak.png", "accuracy_vs_sparsity.png")
# order of the stage tables in report.md (stages not listed follow, by name)
STAGE_ORDER = ("data", "finetune", "prune", "retrain", "build_lib", "export_npy", "infer", "bench")
# key metrics shown first in report.md, per stage (other metrics follow)
HEADLINE = {
    "data": ("bow_baseline_accuracy", "n_train", "n_dev"),
    "finetune": ("accuracy", "f1", "glue_metric", "train_seconds"),
    "prune": ("accuracy_before_retrain", "tile_sparsity", "heads_pruned"),
    "retrain": ("accuracy", "f1", "weight_sparsity", "tile_sparsity", "accuracy_drop"),
    "infer": ("accuracy", "backend", "prediction_agreement", "max_abs_logit_diff", "latency_ms"),
}


class ReportError(ValueError):
    """An input of the report is missing or malformed; the message names the stage and file."""


def sweep_key(path: Path, metrics: dict) -> str:
    """The sparsity of a sweep branch, from its ``s<sparsity>`` folder (checked against ``metrics['sparsity']``)."""
    match = SWEEP_DIR.match(Path(path).parent.name)
    if not match:
        raise ReportError(f"{path}: a sweep stage's metrics must live in an s<sparsity>/ folder")
    key = f"{float(match.group(1)):g}"
    if "sparsity" in metrics and f"{float(metrics['sparsity']):g}" != key:
        raise ReportError(f"{path}: metrics say sparsity {metrics['sparsity']} but the folder says {key}")
    return key


def _read_metrics(stage: str, path: str | Path) -> dict:
    try:
        metrics = read_json(path)
    except ValueError as exc:
        raise ReportError(f"stage {stage}: {exc}") from exc
    if not isinstance(metrics, dict):
        raise ReportError(f"stage {stage}: {path} is not a JSON object")
    return metrics


def build_summary(inputs: dict[str, Any], parent: dict | None, run_name: str) -> dict:
    """The summary dict from the report inputs and the MLflow parent record."""
    summary: dict[str, Any] = {"run_name": run_name}
    sweep: dict[str, dict[str, dict]] = {}
    for stage, paths in inputs.items():
        if isinstance(paths, list):
            for i, path in enumerate(paths):
                metrics = _read_metrics(stage, path)
                key = sweep_key(Path(path), metrics)
                sweep.setdefault(key, {})[stage] = metrics
                if i == 0:
                    summary[stage] = metrics
        else:
            summary[stage] = _read_metrics(stage, paths)
    if sweep:
        summary["sweep"] = dict(sorted(sweep.items(), key=lambda kv: float(kv[0])))
    summary["mlflow"] = {
        "tracking_uri": parent.get("tracking_uri") if parent else None,
        "experiment_id": parent.get("experiment_id") if parent else None,
        "parent_run_id": parent.get("parent_run_id") if parent else None,
    }
    return summary


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:.4f}" if isinstance(value, float) and abs(value) < 1000 else f"{value:g}"


def _ordered_keys(stage: str, rows: list[dict]) -> list[str]:
    present = {k for r in rows for k in r}
    head = [k for k in HEADLINE.get(stage, ()) if k in present]
    return head + sorted(present - set(head) - {"sparsity"})


def _stage_rank(stage: str) -> tuple[int, str]:
    return (STAGE_ORDER.index(stage) if stage in STAGE_ORDER else len(STAGE_ORDER), stage)


def bench_section(bench: dict, plots: list[str]) -> list[str]:
    """report.md lines of the benchmark: device and ceilings, every system at the headline shape (ms, the
    repeat, TFLOP/s, speed relative to our dense engine), then the ``plots`` (paths relative to report.md)."""
    from .bench import headline_rows

    meta, rows = bench.get("meta", {}), bench.get("rows", [])
    gpu = bool(meta.get("gpu"))
    lines = ["## Benchmark", ""]
    device = f"- device: {meta.get('device', 'unknown')}" + ("" if gpu else " (CPU only: GPU numbers need a GPU)")
    lines.append(device)
    if gpu:
        lines.append(f"- measured fp16 GEMM ceiling {meta.get('gemm_tflops', float('nan')):.0f} TFLOP/s, "
                     f"copy {meta.get('copy_gbs', float('nan')):.0f} GB/s")
    lines.append(f"- torch {meta.get('torch')}, transformers {meta.get('transformers')}; median of "
                 f"{meta.get('iters')} runs after {meta.get('warmup')} warm-up, each measured twice")
    headline = headline_rows(rows, gpu)
    if headline is not None:
        (name, batch, seq, kind), at = headline
        ours = "et-cuda-packed" if gpu else "et-cpu-packed"
        dense = next((r["ms_median"] for r in at if r["system"] == ours and r["sparsity"] == 0.0), None)
        lengths = "dev-set lengths" if kind == "dev" else f"{kind} lengths"
        lines += ["", f"Headline: {name}, batch {batch}, seq {at[0]['seq'] if at else seq} ({lengths}).", "",
                  "| system | sparsity | ms (median) | ms (repeat) | TFLOP/s | our dense ms / this ms |",
                  "|---|---|---|---|---|---|"]
        for r in sorted(at, key=lambda r: (not r["system"].startswith("hf"), r["system"], r["sparsity"])):
            rel = f"{dense / r['ms_median']:.2f}x" if dense else "-"
            lines.append(f"| {r['system']} | {r['sparsity']:g} | {r['ms_median']:.3f} | {r['ms_median_repeat']:.3f} | "
                         f"{r['tflops']:.2f} | {rel} |")
    if meta.get("skipped"):
        lines += ["", f"Not measured (time budget or missing inputs): {len(meta['skipped'])} rows"]
    lines.append("")
    for plot in plots:
        lines += [f"![{Path(plot).stem.replace('_', ' ')}]({plot})", ""]
    return lines


def render_markdown(summary: dict, plot: str | None, bench_lines: list[str] | None = None) -> str:
    """A short report: one table per stage (sweep stages: one row per sparsity), the plot, the benchmark
    section (``bench_lines``, from :func:`bench_section`), MLflow ids."""
    lines = [f"# et-pipeline report: {summary['run_name']}", ""]
    sweep = summary.get("sweep", {})
    sweep_stages = {s for branch in sweep.values() for s in branch}
    for stage in sorted(set(summary) - {"run_name", "sweep", "mlflow"} | sweep_stages, key=_stage_rank):
        if stage in sweep_stages:
            rows = [(key, branch[stage]) for key, branch in sweep.items() if stage in branch]
            keys = _ordered_keys(stage, [r for _, r in rows])
            lines += [f"## {stage} (per sparsity)", "", "| sparsity | " + " | ".join(keys) + " |",
                      "|---" * (len(keys) + 1) + "|"]
            lines += ["| " + " | ".join([key] + [_fmt(r.get(k, "")) for k in keys]) + " |" for key, r in rows]
        elif isinstance(summary[stage], dict):
            lines += [f"## {stage}", "", "| metric | value |", "|---|---|"]
            lines += [f"| {k} | {_fmt(summary[stage][k])} |" for k in _ordered_keys(stage, [summary[stage]])]
        lines.append("")
    if plot:
        lines += ["## Accuracy vs sparsity", "", f"![accuracy vs sparsity]({plot})", ""]
    lines += bench_lines or []
    ml = summary["mlflow"]
    lines += ["## MLflow", "", f"- tracking URI: `{ml['tracking_uri']}`", f"- experiment id: `{ml['experiment_id']}`",
              f"- parent run id: `{ml['parent_run_id']}`", ""]
    return "\n".join(lines)


def numeric_metrics(summary: dict) -> dict[str, float]:
    """Flattened numeric metrics (``finetune.accuracy``, ``sweep.0.5.retrain.accuracy``, …) for MLflow."""
    out: dict[str, float] = {}

    def walk(obj: Any, prefix: str) -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                walk(v, f"{prefix}{k}.")
        elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
            out[prefix[:-1]] = float(obj)

    walk({k: v for k, v in summary.items() if k != "mlflow"}, "")
    return out


def draw_sweep_plot(summary: dict, out_png: Path) -> bool:
    """Draw accuracy vs sparsity when the sweep has retrain results; returns whether it drew."""
    sweep = summary.get("sweep", {})
    rows = []
    for key, branch in sweep.items():
        if "retrain" in branch:
            row = dict(branch["retrain"], sparsity=float(key))
            before = branch.get("prune", {}).get("accuracy_before_retrain")
            if before is not None:
                row.setdefault("accuracy_before_retrain", before)
            rows.append(row)
    if not rows or "accuracy" not in summary.get("finetune", {}):
        return False
    from .sparsity_plot import plot_accuracy_vs_sparsity

    tmp = out_png.with_name(f".{out_png.name}.tmp.png")
    plot_accuracy_vs_sparsity(rows, float(summary["finetune"]["accuracy"]), tmp)
    tmp.replace(out_png)
    return True


def _bench_inputs(metrics_path: str | None, out_dir: Path, own_accuracy_plot: bool) -> tuple[list[str], list[Path]]:
    """The benchmark section's lines and plot files, from ``bench.json`` and the PNGs beside the bench
    stage's metrics (none when the stage did not run); its accuracy plot only when the report drew none."""
    if not metrics_path:
        return [], []
    folder = Path(metrics_path).parent
    try:
        bench = read_json(folder / "bench.json")
    except ValueError as exc:
        raise ReportError(f"stage bench: {exc}") from exc
    names = BENCH_PLOTS[:-1] if own_accuracy_plot else BENCH_PLOTS
    plots = [folder / n for n in names if (folder / n).is_file()]
    rel = [str(Path(os.path.relpath(p, out_dir))) for p in plots]
    return bench_section(bench, rel), plots


def build_parser():
    """Command line of the stage."""
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--inputs", type=json.loads, required=True,
                   help="JSON object: stage -> metrics.json path, or a list of paths for sweep stages")
    p.add_argument("--out-dir", type=Path, required=True, help="folder for summary.json and report.md")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the stage; returns the exit status."""
    args = build_parser().parse_args(argv)
    setup_runtime(args.threads, args.seed)
    if not isinstance(args.inputs, dict) or not args.inputs:
        print("report: --inputs must be a non-empty JSON object", file=sys.stderr)
        return 2
    run_dir = args.run_dir or args.out_dir
    try:
        with tracking.stage_run(run_dir, "report", {"inputs": args.inputs}) as run:
            parent = tracking.read_parent(run_dir) or {"experiment_id": run.experiment_id}
            summary = build_summary(args.inputs, parent, Path(run_dir).name)
            out = Path(args.out_dir)
            plot = PLOT_FILE if draw_sweep_plot(summary, out / PLOT_FILE) else None
            bench_lines, bench_plots = _bench_inputs(args.inputs.get("bench"), out, plot is not None)
            write_json(out / "summary.json", summary)
            write_text(out / "report.md", render_markdown(summary, plot, bench_lines))
            run.log_metrics(numeric_metrics(summary))
            for name in ("summary.json", "report.md", plot):
                if name:
                    run.log_artifact(out / name)
            for png in bench_plots:
                run.log_artifact(png)
    except ReportError as exc:
        print(f"report: error: {exc}", file=sys.stderr)
        return 1
    print(f"report: wrote {out / 'summary.json'} and {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
