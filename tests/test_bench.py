"""The bench stage on a CPU-only machine: small grid (libet CPU backend vs HF eager), outputs, MLflow,
and the pieces the GPU path relies on (FLOP counts, headline metrics, BENCHMARKS.md rendering)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from libet_build import apply_masks, export, libet, random_bert, random_masks  # noqa: F401
from pipeline_steps import bench


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory) -> Path:
    """A results/<run> folder with what the bench rule reads: export_npy/s0.5 and retrain/s0.5/model."""
    run = tmp_path_factory.mktemp("run")
    model = random_bert(3, layers=2, hidden=64, heads=4, intermediate=128, vocab=97, max_positions=80, labels=2)
    masks = random_masks(model, 4, density=0.5)
    apply_masks(model, masks)
    model.save_pretrained(run / "retrain" / "s0.5" / "model")
    export(model, run / "export_npy" / "s0.5", masks)
    (run / "retrain" / "s0.5" / "metrics.json").write_text(json.dumps({"accuracy": 0.81, "sparsity": 0.5}))
    (run / "finetune").mkdir()
    (run / "finetune" / "metrics.json").write_text(json.dumps({"accuracy": 0.84}))
    return run


def _args(libet, run: Path, out: Path) -> list[str]:  # noqa: F811
    return ["--lib", str(libet.lib), "--manifests", str(run / "export_npy" / "s0.5" / "weights.txt"),
            "--finetune-metrics", str(run / "finetune" / "metrics.json"),
            "--retrain-metrics", str(run / "retrain" / "s0.5" / "metrics.json"), "--out-dir", str(out),
            "--threads", "2"]


def test_cpu_grid_writes_tables_metrics_and_plots(libet, pipeline_run, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "bench"
    assert bench.main([*_args(libet, pipeline_run, out), "--standalone"]) == 0
    printed = capsys.readouterr().out
    assert "GPU numbers need a GPU" in printed
    with (out / "bench.csv").open() as f:
        rows = list(csv.DictReader(f))
    systems = {r["system"] for r in rows}
    assert systems == {"hf-eager", "et-cpu-packed"}
    assert {(int(r["batch"]), int(r["seq"])) for r in rows} == {(b, s) for b in bench.CPU_BATCHES for s in bench.CPU_SEQS}
    for r in rows:
        assert float(r["ms_median"]) > 0 and float(r["ms_median_repeat"]) > 0 and int(r["runs"]) == 10
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["gpu"] == 0.0 and metrics["speedup_vs_eager"] > 0
    data = json.loads((out / "bench.json").read_text())
    assert data["accuracy"] == {"0.0": 0.84, "0.5": 0.81}
    for png in ("latency_vs_batch.png", "speedup_vs_sparsity.png", "accuracy_vs_sparsity.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert not (out / "models").exists()


def test_stage_logs_to_mlflow(libet, pipeline_run, tmp_path, mlflow_uri):  # noqa: F811
    from mlflow.tracking import MlflowClient

    out = tmp_path / "bench"
    assert bench.main([*_args(libet, pipeline_run, out), "--run-dir", str(tmp_path / "runx")]) == 0
    client = MlflowClient(mlflow_uri)
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    run = next(r for r in runs if r.data.tags.get("stage") == "bench")
    assert run.data.metrics["speedup_vs_eager"] == pytest.approx(json.loads((out / "metrics.json").read_text())
                                                                 ["speedup_vs_eager"])
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"bench.csv", "bench.json", "metrics.json", "latency_vs_batch.png"} <= names


def test_bad_lib_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--lib", str(tmp_path / "nope.so"), "--out-dir", str(tmp_path / "o"), "--standalone"])
    assert "nope.so" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_forward_flops_counts_linear_and_attention():
    d = bench.ModelDims(layers=12, hidden=768, heads=12, intermediate=3072)
    lengths = np.full(32, 128)
    assert bench.forward_flops(d, lengths, padded=False) == pytest.approx(715.1e9, rel=1e-3)
    ragged = np.array([16, 128])
    packed, padded = bench.forward_flops(d, ragged, False), bench.forward_flops(d, ragged, True)
    assert padded / packed == pytest.approx((2 * 128 * 7077888 * 2 + 4 * 2 * 128 ** 2 * 768) /
                                            (144 * 7077888 * 2 + 4 * (16 ** 2 + 128 ** 2) * 768))
    assert bench.forward_flops(d, lengths, False, density=0.2) < 0.25 * bench.forward_flops(d, lengths, False)


def _row(system: str, ms: float, **kw) -> dict:
    base = {"model": "bert-base", "batch": 32, "seq": 128, "lengths": "uniform", "sparsity": 0.0,
            "ms_median": ms, "ms_median_repeat": ms, "tflops": 1.0, "ratio_to_floor": 1.5}
    return {**base, "system": system, **kw}


def test_headline_metrics_and_markdown():
    rows = [_row("et-cuda-packed", 1.0), _row("hf-compile-max-autotune", 1.5), _row("hf-eager", 3.0),
            _row("hf-sdpa", 2.0), _row("et-cuda-packed", 0.1, batch=1)]
    m = bench.headline_metrics(rows, cuda=True)
    assert m == {"gpu": 1.0, "speedup_vs_compile": 1.5, "speedup_vs_eager": 3.0, "speedup_vs_sdpa": 2.0,
                 "headline_ms": 1.0, "headline_batch": 32.0}
    meta = {"command": "python -m pipeline_steps.bench --standalone", "device": "NVIDIA H100 80GB HBM3",
            "torch": "2.11", "cuda_runtime": "13.0", "transformers": "5", "date": "2026-11-25 03:00",
            "gemm_tflops": 750.0, "copy_gbs": 3000.0, "warmup": 10, "iters": 50, "skipped": [], "commit": "abc123"}
    md = bench.benchmarks_markdown(meta, rows, m, ["latency_vs_batch.png"], "docs/benchmarks")
    assert "NVIDIA H100 80GB HBM3" in md and "`python -m pipeline_steps.bench --standalone`" in md
    assert "- commit: abc123" in md
    assert "![latency vs batch](docs/benchmarks/latency_vs_batch.png)" in md
    assert md.count("| bert-base |") == len(rows)
    assert "## Plots" not in bench.benchmarks_markdown(meta, rows, m, [], "docs/benchmarks")


def _pipeline_rows() -> list[dict]:
    """GPU-shaped rows of the pipeline's models on dev lengths (seq = the batch's longest)."""
    rows = []
    for batch, seq in ((8, 97), (32, 121)):
        scale = batch / 8
        for system, sparsity, ms in (("hf-eager", 0.0, 4.0), ("hf-sdpa", 0.0, 3.0), ("et-cuda-packed", 0.0, 1.0),
                                     ("et-cuda-padded", 0.0, 1.3), ("et-cuda-packed", 0.5, 0.8),
                                     ("et-cuda-packed", 0.8, 0.5)):
            rows.append(_row(system, ms * scale, model=bench.PIPELINE_MODEL, batch=batch, seq=seq, lengths="dev",
                             sparsity=sparsity, fraction_of_peak=0.1))
    rows.append(_row("hf-compile-max-autotune", 6.0, model=bench.PIPELINE_MODEL, batch=32, seq=121, lengths="dev",
                     fraction_of_peak=0.2))
    return rows


def test_gpu_headline_falls_back_to_the_pipeline_models_with_per_sparsity_speedups():
    rows = _pipeline_rows()
    assert bench.headline_shape(rows, cuda=True) == (bench.PIPELINE_MODEL, 32, None, "dev")
    m = bench.headline_metrics(rows, cuda=True)
    assert m["headline_ms"] == 4.0 and m["headline_batch"] == 32.0
    assert m["speedup_vs_compile"] == pytest.approx(1.5) and m["speedup_vs_eager"] == pytest.approx(4.0)
    assert m["speedup_vs_dense_s0.8"] == pytest.approx(2.0) and m["speedup_vs_dense_s0.5"] == pytest.approx(1.25)
    assert m["speedup_vs_compile_s0.8"] == pytest.approx(3.0) and m["speedup_vs_sdpa_s0.5"] == pytest.approx(3.75)
    # BERT-base rows present: they stay the headline
    assert bench.headline_shape(rows + [_row("et-cuda-packed", 1.0)], cuda=True) == ("bert-base", 32, 128, "uniform")


def test_gpu_plots_of_the_pipeline_models(tmp_path):
    paths = bench.write_plots(_pipeline_rows(), {0.0: 0.95, 0.5: 0.94, 0.8: 0.93}, tmp_path, cuda=True)
    assert [p.name for p in paths] == ["latency_vs_batch.png", "speedup_vs_sparsity.png", "accuracy_vs_sparsity.png",
                                       "fraction_of_peak.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)


def test_pipeline_models_on_dev_lengths(libet, pipeline_run, tmp_path):  # noqa: F811
    """The GPU path's pipeline benchmark, run on the CPU backend: the dense fine-tuned model (HF and its
    own dense export) and the retrained export, on batches of the dev set's first examples."""
    from pipeline_steps import glue, modeling

    finetune = tmp_path / "finetune_model"
    model = random_bert(5, layers=2, hidden=64, heads=4, intermediate=128, vocab=97, max_positions=80, labels=2)
    model.save_pretrained(finetune)
    tokenizer = modeling.load_tokenizer(modeling.EMBEDDED_MODEL)
    tokenizer.save_pretrained(finetune)
    data = tmp_path / "data"
    data.mkdir()
    task = glue.TASKS["mrpc"]
    texts = [("a b c " * (i % 9 + 1), "d e " * (i % 4 + 1)) for i in range(12)]
    (data / glue.TASK_FILE).write_text(json.dumps({"task": "mrpc"}))
    glue.write_split(data / "dev.tsv", task, [glue.Example(a, b, float(i % 2)) for i, (a, b) in enumerate(texts)])
    lengths = [len(tokenizer(a, b, truncation=True, max_length=32)["input_ids"]) for a, b in texts]

    work = tmp_path / "work"
    work.mkdir()
    ctx = bench.Ctx(lib=libet.lib, cuda=False, device=__import__("torch").device("cpu"), warmup=1, iters=3,
                    ceiling_tflops=0.0, deadline=float("inf"), rows=[], work=work, compile_shapes=set(), skipped=[])
    manifest = pipeline_run / "export_npy" / "s0.5" / "weights.txt"
    bench.run_pipeline_models(ctx, finetune, [manifest], data, 32, [1, 4, 64], {4}, np.random.default_rng(0))
    assert ctx.skipped == []
    assert {(r["batch"], r["seq"]) for r in ctx.rows} == {(1, lengths[0]), (4, max(lengths[:4]))}  # no 64 dev rows
    assert {(r["system"], r["sparsity"]) for r in ctx.rows} == {
        ("hf-eager", 0.0), ("et-cpu-packed", 0.0), ("et-cpu-padded", 0.0), ("et-cpu-packed", 0.5), ("et-cpu-padded", 0.5)}
    assert all(r["model"] == bench.PIPELINE_MODEL and r["lengths"] == "dev" for r in ctx.rows)
    assert (work / "pipeline-dense" / "weights.txt").is_file()

    ctx.rows.clear()
    bench.run_pipeline_models(ctx, None, [manifest], data, 32, [1], set(), np.random.default_rng(0))
    assert ctx.rows == [] and ctx.skipped == ["pipeline models: no --finetune-model"]
