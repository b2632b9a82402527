"""report stage: summary.json key paths, sweep layout, report.md tables, plot, MLflow artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline_steps import report, tracking
from pipeline_steps.stage import write_json


def _inputs(root: Path, sweep=("0.5", "0.8")) -> dict:
    write_json(root / "data" / "metrics.json", {"bow_baseline_accuracy": 0.51, "n_train": 100})
    write_json(root / "finetune" / "metrics.json", {"accuracy": 0.95, "f1": 0.94, "device": "cpu"})
    inputs = {"data": str(root / "data" / "metrics.json"), "finetune": str(root / "finetune" / "metrics.json")}
    for stage in ("prune", "retrain", "infer"):
        paths = []
        for s in sweep:
            metrics = {"sparsity": float(s), "accuracy": 0.9 - float(s) / 10}
            if stage == "prune":
                metrics = {"sparsity": float(s), "accuracy_before_retrain": 0.6}
            if stage == "infer":
                metrics["backend"] = "cpu"
            write_json(root / stage / f"s{s}" / "metrics.json", metrics)
            paths.append(str(root / stage / f"s{s}" / "metrics.json"))
        inputs[stage] = paths
    return inputs


def test_summary_key_paths(tmp_path):
    parent = {"tracking_uri": "sqlite:///x.db", "experiment_id": "7", "parent_run_id": "abc"}
    s = report.build_summary(_inputs(tmp_path), parent, "r1")
    assert s["data"]["bow_baseline_accuracy"] == 0.51
    assert s["finetune"]["accuracy"] == 0.95 and s["finetune"]["f1"] == 0.94
    assert s["mlflow"]["experiment_id"] == "7" and s["mlflow"]["parent_run_id"] == "abc"
    assert list(s["sweep"]) == ["0.5", "0.8"]
    assert s["sweep"]["0.8"]["retrain"]["accuracy"] == pytest.approx(0.82)
    assert s["retrain"] == s["sweep"]["0.5"]["retrain"] and s["infer"]["backend"] == "cpu"
    numeric = report.numeric_metrics(s)
    assert numeric["finetune.accuracy"] == 0.95 and numeric["sweep.0.8.retrain.accuracy"] == pytest.approx(0.82)
    assert "finetune.device" not in numeric


def test_sweep_folder_and_metric_must_agree(tmp_path):
    write_json(tmp_path / "retrain" / "s0.5" / "metrics.json", {"sparsity": 0.8, "accuracy": 0.9})
    with pytest.raises(report.ReportError, match="sparsity 0.8 but the folder says 0.5"):
        report.build_summary({"retrain": [str(tmp_path / "retrain" / "s0.5" / "metrics.json")]}, None, "r")
    write_json(tmp_path / "retrain" / "metrics.json", {"accuracy": 0.9})
    with pytest.raises(report.ReportError, match="s<sparsity>/ folder"):
        report.build_summary({"retrain": [str(tmp_path / "retrain" / "metrics.json")]}, None, "r")


def test_missing_metrics_file_names_stage(tmp_path):
    with pytest.raises(report.ReportError, match="stage finetune: .*nope.json"):
        report.build_summary({"finetune": str(tmp_path / "nope.json")}, None, "r")


def test_markdown_has_a_table_per_stage_and_a_row_per_sparsity(tmp_path):
    s = report.build_summary(_inputs(tmp_path), None, "r1")
    md = report.render_markdown(s, "plot.png")
    assert "| bow_baseline_accuracy | 0.5100 |" in md
    assert "## retrain (per sparsity)" in md and "| 0.8 | 0.8200 |" in md
    assert md.count("## ") == 7  # data, finetune, prune, retrain, infer, plot, MLflow
    assert "![accuracy vs sparsity](plot.png)" in md


def test_main_writes_outputs_plot_and_logs_to_the_parent(tmp_path, mlflow_uri):
    run_dir = tmp_path / "results" / "r1"
    info = tracking.open_parent(run_dir, "r1", {"tracking_uri": None, "artifact_root": str(tmp_path / "art")},
                                {"seed": 1}, "hash")
    inputs = _inputs(run_dir)
    assert report.main(["--run-dir", str(run_dir), "--inputs", json.dumps(inputs), "--out-dir", str(run_dir)]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["mlflow"]["parent_run_id"] == info["parent_run_id"]
    assert (run_dir / "report.md").read_text().startswith("# et-pipeline report: r1")
    assert (run_dir / report.PLOT_FILE).stat().st_size > 1000
    mlc = tracking.client(mlflow_uri)
    (run,) = mlc.search_runs([info["experiment_id"]], filter_string="tags.stage = 'report'")
    assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == info["parent_run_id"]
    assert {a.path for a in mlc.list_artifacts(run.info.run_id)} == {"summary.json", "report.md", report.PLOT_FILE}
    assert run.data.metrics["finetune.accuracy"] == 0.95


def test_main_without_sweep_draws_no_plot(tmp_path, mlflow_uri):
    run_dir = tmp_path / "r2"
    inputs = {k: v for k, v in _inputs(run_dir).items() if k in ("data", "finetune")}
    assert report.main(["--run-dir", str(run_dir), "--inputs", json.dumps(inputs), "--out-dir", str(run_dir)]) == 0
    assert not (run_dir / report.PLOT_FILE).exists()
    assert "sweep" not in json.loads((run_dir / "summary.json").read_text())


def test_bad_inputs_write_nothing(tmp_path, mlflow_uri, capsys):
    assert report.main(["--inputs", "[]", "--out-dir", str(tmp_path)]) == 2
    code = report.main(["--run-dir", str(tmp_path), "--inputs", json.dumps({"finetune": str(tmp_path / "x.json")}),
                        "--out-dir", str(tmp_path)])
    assert code == 1 and not (tmp_path / "summary.json").exists()
    assert "stage finetune" in capsys.readouterr().err


def _bench_outputs(run_dir: Path) -> str:
    """A GPU-shaped bench stage output (bench.json, metrics.json, two plots); returns its metrics path."""
    rows = [{"model": "pipeline", "batch": 32, "seq": 121, "lengths": "dev", "system": system, "sparsity": sp,
             "ms_median": ms, "ms_median_repeat": ms * 1.01, "tflops": 10.0 / ms}
            for system, sp, ms in (("hf-eager", 0.0, 4.0), ("hf-compile-max-autotune", 0.0, 2.0),
                                   ("et-cuda-packed", 0.0, 1.0), ("et-cuda-packed", 0.8, 0.5))]
    meta = {"gpu": True, "device": "NVIDIA H100 80GB HBM3", "gemm_tflops": 700.0, "copy_gbs": 3000.0,
            "torch": "2.11.0", "transformers": "5.17.0", "iters": 50, "warmup": 10, "skipped": []}
    bench_dir = run_dir / "bench"
    write_json(bench_dir / "bench.json", {"meta": meta, "rows": rows, "accuracy": {}})
    write_json(bench_dir / "metrics.json", {"gpu": 1.0, "speedup_vs_compile": 2.0})
    for name in ("latency_vs_batch.png", "accuracy_vs_sparsity.png"):
        (bench_dir / name).write_bytes(b"\x89PNG fake")
    return str(bench_dir / "metrics.json")


def test_bench_headline_table_and_plots_in_the_report(tmp_path, mlflow_uri):
    run_dir = tmp_path / "results" / "r3"
    inputs = {**_inputs(run_dir), "bench": _bench_outputs(run_dir)}
    assert report.main(["--run-dir", str(run_dir), "--inputs", json.dumps(inputs), "--out-dir", str(run_dir)]) == 0
    md = (run_dir / "report.md").read_text()
    assert "## Benchmark" in md and "- device: NVIDIA H100 80GB HBM3" in md and "700 TFLOP/s" in md
    assert "Headline: pipeline, batch 32, seq 121 (dev-set lengths)." in md
    assert "| hf-eager | 0 | 4.000 | 4.040 | 2.50 | 0.25x |" in md
    assert "| et-cuda-packed | 0.8 | 0.500 | 0.505 | 20.00 | 2.00x |" in md
    assert "![latency vs batch](bench/latency_vs_batch.png)" in md
    assert "bench/accuracy_vs_sparsity.png" not in md  # the report draws its own accuracy plot
    assert md.index("## Benchmark") < md.index("## MLflow")
    mlc = tracking.client(mlflow_uri)
    runs = [r for e in mlc.search_experiments() for r in mlc.search_runs([e.experiment_id])
            if r.data.tags.get("stage") == "report" and r.info.status == "FINISHED"]
    assert any("latency_vs_batch.png" in {a.path for a in mlc.list_artifacts(r.info.run_id)} for r in runs)


def test_bad_bench_json_is_named(tmp_path, mlflow_uri, capsys):
    run_dir = tmp_path / "r4"
    metrics = _bench_outputs(run_dir)
    (run_dir / "bench" / "bench.json").write_text("{not json")
    inputs = {**_inputs(run_dir), "bench": metrics}
    assert report.main(["--run-dir", str(run_dir), "--inputs", json.dumps(inputs), "--out-dir", str(run_dir)]) == 1
    assert "stage bench" in capsys.readouterr().err and not (run_dir / "report.md").exists()
