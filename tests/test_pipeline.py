"""The smoke preset through Snakemake end to end, in a temporary directory with its own MLflow store.

One module-scoped run of the whole DAG (``all``), then checks of summary.json, the files, the MLflow
runs (parent + one FINISHED child per stage), and of Snakemake's rerun behaviour: ``--forcerun``,
``--until``, a changed config value, and a bad config key.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline_steps import tracking

ROOT = Path(__file__).resolve().parent.parent
RUN = "smoke"
TARGET = "all"
SWEEP_STAGES = ("prune", "retrain", "export_npy", "infer")
SINGLE_STAGES = ("prepare_data", "finetune", "build_lib", "bench", "report")


def snakemake(workdir: Path, env: dict, *args: str, config: tuple[str, ...] = (),
              timeout: int = 900) -> subprocess.CompletedProcess:
    """Run Snakemake on the repository's Snakefile inside ``workdir`` (smoke preset, run name ``smoke``)."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--cores", "2", *args, "--config", "preset=smoke", f"run_name={RUN}", *config]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=workdir)


def planned(workdir: Path, env: dict, *args: str) -> dict[str, int]:
    """The jobs a dry run would execute: rule name -> count (from Snakemake's job stats table)."""
    proc = snakemake(workdir, env, "--dry-run", *args, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    if "Nothing to be done" in out:
        return {}
    table = out.split("Job stats:", 1)[1].split("total", 1)[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, _empty_mlflow_db):
    """Run the whole smoke DAG once; yields (workdir, env, uri, seconds)."""
    workdir = tmp_path_factory.mktemp("pipeline")
    shutil.copyfile(_empty_mlflow_db, workdir / "mlflow.db")
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TQDM_DISABLE": "1"}
    started = time.monotonic()
    proc = snakemake(workdir, env, TARGET)
    seconds = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    print(f"\nsmoke DAG ({TARGET}) wall time: {seconds:.1f} s")
    yield workdir, env, uri, seconds


def _summary(workdir: Path) -> dict:
    return json.loads((workdir / "results" / RUN / "summary.json").read_text())


def test_summary_has_every_stage_under_its_key_path(pipeline):
    workdir = pipeline[0]
    s = _summary(workdir)
    assert 0.0 <= s["data"]["bow_baseline_accuracy"] <= 1.0
    assert 0.0 <= s["finetune"]["accuracy"] <= 1.0 and 0.0 <= s["finetune"]["f1"] <= 1.0
    assert s["mlflow"]["experiment_id"] and s["mlflow"]["parent_run_id"]
    assert list(s["sweep"]) == ["0.5"]
    for stage in ("prune", "retrain", "infer"):
        assert s[stage] == s["sweep"]["0.5"][stage]
    assert 0.0 <= s["retrain"]["accuracy"] <= 1.0
    assert s["infer"]["backend"] in ("cpu", "cuda")
    assert "build_lib" in s and "bench" in s


def test_files_logs_and_benchmarks(pipeline):
    workdir = pipeline[0]
    r = workdir / "results" / RUN
    for name in ("train.tsv", "dev.tsv", "test.tsv", "task.json", "metrics.json"):
        assert (r / "data" / name).is_file()
    assert (r / "finetune" / "model" / "model.safetensors").is_file()
    assert (r / "report.md").read_text().startswith(f"# et-pipeline report: {RUN}")
    assert (r / "accuracy_vs_sparsity.png").is_file()
    for stage in SINGLE_STAGES:
        assert (workdir / "logs" / RUN / f"{stage}.log").is_file(), stage
        assert (workdir / "benchmarks" / RUN / f"{stage}.tsv").is_file(), stage
    for stage in SWEEP_STAGES:
        assert (workdir / "logs" / RUN / f"{stage}_s0.5.log").is_file(), stage


def test_mlflow_parent_and_finished_child_per_stage(pipeline):
    workdir, _, uri, _ = pipeline
    s = _summary(workdir)
    mlc = tracking.client(uri)
    exp = mlc.get_experiment_by_name(RUN)
    assert exp.experiment_id == s["mlflow"]["experiment_id"]
    parent = mlc.get_run(s["mlflow"]["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert {"git_commit", "config_hash", "backend", "device"} <= set(parent.data.tags)
    assert "summary.json" in {a.path for a in mlc.list_artifacts(parent.info.run_id)}
    children = mlc.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    names = sorted(c.data.tags["mlflow.runName"] for c in children)
    expected = sorted([*SINGLE_STAGES, *(f"{st}[s0.5]" for st in SWEEP_STAGES)])
    assert names == expected, names
    assert all(c.info.status == "FINISHED" for c in children)
    (ft,) = [c for c in children if c.data.tags["stage"] == "finetune"]
    assert ft.data.metrics["accuracy"] == s["finetune"]["accuracy"]
    assert len(mlc.get_metric_history(ft.info.run_id, "train.loss")) == ft.data.metrics["train_steps"]
    assert ft.data.params["finetune.epochs"] == "1"


def test_until_stops_at_the_named_rule(pipeline):
    workdir, env = pipeline[0], pipeline[1]
    assert planned(workdir, env, TARGET) == {}
    assert planned(workdir, env, "--forcerun", "prepare_data", "--until", "finetune") == {
        "prepare_data": 1, "finetune": 1}


def test_changed_config_value_reruns_the_stage_that_uses_it(pipeline, tmp_path):
    workdir, env = pipeline[0], pipeline[1]
    changed = tmp_path / "changed.yaml"
    changed.write_text("finetune:\n  learning_rate: 3.0e-5\n")
    jobs = planned(workdir, env, TARGET, "--configfile", str(changed))
    assert jobs.get("finetune") == 1 and "prepare_data" not in jobs and "build_lib" not in jobs
    assert jobs.get("report") == 1
    changed.write_text("data:\n  synthetic:\n    n_dev: 150\n")  # a smoke-preset key: the command line wins
    jobs = planned(workdir, env, TARGET, "--configfile", str(changed))
    assert jobs.get("prepare_data") == 1 and jobs.get("finetune") == 1


def test_forcerun_finetune_reruns_it_and_downstream_under_the_same_parent(pipeline):
    workdir, env, uri, _ = pipeline
    jobs = planned(workdir, env, TARGET, "--forcerun", "finetune")
    assert "prepare_data" not in jobs and "build_lib" not in jobs
    assert jobs["finetune"] == 1 and jobs["report"] == 1
    assert all(jobs.get(stage) == 1 for stage in ("prune", "retrain", "export_npy", "infer"))

    data_mtime = (workdir / "results" / RUN / "data" / "train.tsv").stat().st_mtime
    parent_id = _summary(workdir)["mlflow"]["parent_run_id"]
    proc = snakemake(workdir, env, "--forcerun", "finetune", "--until", "finetune")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (workdir / "results" / RUN / "data" / "train.tsv").stat().st_mtime == data_mtime
    mlc = tracking.client(uri)
    exp = mlc.get_experiment_by_name(RUN)
    finetunes = mlc.search_runs([exp.experiment_id], filter_string="tags.stage = 'finetune'")
    assert len(finetunes) == 2 and {r.data.tags["mlflow.parentRunId"] for r in finetunes} == {parent_id}
    assert all(r.info.status == "FINISHED" for r in finetunes)
    assert len(mlc.search_runs([exp.experiment_id], filter_string="tags.stage = 'prepare_data'")) == 1


def test_bad_config_key_fails_fast_naming_it(tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    started = time.monotonic()
    proc = snakemake(tmp_path, env, TARGET, config=("finetune_epochs=3",))
    assert proc.returncode != 0
    assert "unknown config key 'finetune_epochs'" in proc.stdout + proc.stderr
    assert time.monotonic() - started < 60
    assert not (tmp_path / "results").exists() and not (tmp_path / "mlflow.db").exists()
