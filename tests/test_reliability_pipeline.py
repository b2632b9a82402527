"""The real DAG under stress, on a tiny BERT so that process start-up dominates:

1. a 4-branch sparsity sweep with ``--cores 4``: four prune processes log to one SQLite MLflow store
   at the same time; every metric arrives, no "database is locked";
2. the whole Snakemake process group SIGKILLed while retrain branches train: no killed branch has
   output that looks complete, the killed runs are marked KILLED by the next invocation, and
   ``snakemake --unlock`` + ``--rerun-incomplete`` finishes the run without touching earlier stages.

The two tests share one working directory (module fixture), in this order.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from pipeline_steps import tracking
from reliability_util import PROJECT_ROOT, PYTHON, sqlite_uri, subprocess_env

SWEEP = [0.2, 0.4, 0.6, 0.8]
BRANCHES = [f"s{s:g}" for s in SWEEP]
RUN = "rel"
SNAKE_TIMEOUT = 420


def _tiny_model(folder: Path) -> None:
    """A random 2-layer BERT (hidden 64, 4 heads of 16) with the embedded MiniLM tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    from pipeline_steps import modeling

    tokenizer = modeling.load_tokenizer(modeling.EMBEDDED_MODEL)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=64)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def snakemake(workdir: Path, *args: str, timeout: float = SNAKE_TIMEOUT, **popen) -> subprocess.CompletedProcess | subprocess.Popen:
    """Run (or, with ``popen=True``, start in its own process group) the project's Snakefile in ``workdir``."""
    cmd = [PYTHON, "-m", "snakemake", "-s", str(PROJECT_ROOT / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(workdir / "config.yaml"), *args]
    env = subprocess_env()
    env.pop("MLFLOW_TRACKING_URI", None)
    if popen.pop("popen", False):
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                cwd=workdir, start_new_session=True)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=workdir)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A working directory with a tiny model, its own MLflow store and a 4-branch sweep config."""
    wd = tmp_path_factory.mktemp("pipeline")
    _tiny_model(wd / "tinybert")
    config = {
        "run_name": RUN,
        "mlflow": {"tracking_uri": sqlite_uri(wd), "artifact_root": str(wd / "mlartifacts")},
        "data": {"synthetic": {"n_train": 160, "n_dev": 64, "n_test": 32}},
        "model": {"name_or_path": str(wd / "tinybert"), "max_seq_length": 32},
        "finetune": {"epochs": 1, "batch_size": 16},
        "prune": {"sweep": SWEEP, "epochs": 1, "batch_size": 16, "sensitivity": {"examples": 32}},
        "retrain": {"epochs": 3, "batch_size": 16},
        "bench": {"enabled": False},
    }
    (wd / "config.yaml").write_text(yaml.safe_dump(config))
    return wd


def _client_and_parent(workdir: Path):
    info = tracking.read_parent(workdir / "results" / RUN)
    return tracking.client(info["tracking_uri"]), info


def _children(mlc, info: dict, prefix: str) -> list:
    runs = mlc.search_runs([info["experiment_id"]], filter_string=f"tags.mlflow.parentRunId = '{info['parent_run_id']}'")
    return [r for r in runs if r.data.tags.get("mlflow.runName", "").startswith(prefix)]


def test_four_branch_sweep_logs_every_metric(workdir: Path) -> None:
    """``--cores 4`` with one thread per prune job: Snakemake starts the four branches together and
    their MLflow runs overlap (all four did in every run so far; at least two are required, since a
    loaded machine may delay one process's imports), every run is FINISHED, each run's per-step loss
    history has exactly ``train_steps`` points and its final metrics equal its metrics.json; no log
    mentions a locked database."""
    proc = snakemake(workdir, "--cores", "4", "--set-threads", "prune=1", "--until", "prune")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    logs = "".join(p.read_text() for p in (workdir / "logs" / RUN).glob("*.log")) + out
    assert "database is locked" not in logs
    mlc, info = _client_and_parent(workdir)
    runs = {r.data.tags["mlflow.runName"]: r for r in _children(mlc, info, "prune[")}
    assert sorted(runs) == sorted(f"prune[{b}]" for b in BRANCHES)
    first_done = out.index("(Rule: prune)")
    assert out[:first_done].count("rule prune:") == len(BRANCHES), "Snakemake did not start the 4 branches together"
    assert _max_overlap([(r.info.start_time, r.info.end_time) for r in runs.values()]) >= 2
    for branch in BRANCHES:
        run = runs[f"prune[{branch}]"]
        assert run.info.status == "FINISHED"
        metrics = json.loads((workdir / "results" / RUN / "prune" / branch / "metrics.json").read_text())
        history = mlc.get_metric_history(run.info.run_id, "train.loss")
        assert len(history) == metrics["train_steps"] > 0
        assert sorted(h.step for h in history) == sorted(set(h.step for h in history))
        for key in ("tile_sparsity", "weight_sparsity", "accuracy_before_retrain"):
            assert run.data.metrics[key] == pytest.approx(metrics[key])


def _max_overlap(intervals: list[tuple[int, int]]) -> int:
    """The largest number of intervals open at one instant."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    best = open_now = 0
    for _, delta in events:
        open_now += delta
        best = max(best, open_now)
    return best


def _mtimes(workdir: Path, *stages: str) -> dict[str, int]:
    root = workdir / "results" / RUN
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for s in stages for p in (root / s).rglob("*")}


def test_sigkill_mid_retrain_then_rerun_incomplete(workdir: Path) -> None:
    """SIGKILL to Snakemake and every stage process as soon as a retrain branch is training."""
    results = workdir / "results" / RUN
    assert (results / "prune" / BRANCHES[-1] / "metrics.json").exists(), "needs the sweep test's outputs"
    earlier = _mtimes(workdir, "data", "finetune", "prune")
    proc = snakemake(workdir, "--cores", "4", "--set-threads", "retrain=1", "--until", "retrain", popen=True)
    mlc, info = _client_and_parent(workdir)
    deadline = time.monotonic() + SNAKE_TIMEOUT
    while not any(r.info.status == "RUNNING" and "train.loss" in r.data.metrics for r in _children(mlc, info, "retrain[")):
        assert proc.poll() is None, f"the pipeline ended before it could be killed:\n{proc.stdout.read()[-3000:]}"
        assert time.monotonic() < deadline, "retrain never started"
        time.sleep(0.25)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    at_kill = {r.data.tags["mlflow.runName"]: r for r in _children(mlc, info, "retrain[")}
    killed_ids = {r.info.run_id for r in at_kill.values() if r.info.status == "RUNNING"}
    assert killed_ids  # SIGKILL cannot be caught: those runs are still RUNNING

    for branch in BRANCHES:  # each branch is either complete (finished before the kill) or has no output at all
        done = at_kill.get(f"retrain[{branch}]")
        if done is not None and done.info.status == "FINISHED":
            assert (results / "retrain" / branch / "metrics.json").exists()
        else:
            assert not (results / "retrain" / branch / "metrics.json").exists()
            assert not (results / "retrain" / branch / "model").exists()

    unlock = snakemake(workdir, "--unlock")
    assert unlock.returncode == 0, unlock.stderr[-2000:]
    plan = snakemake(workdir, "-n", "--until", "retrain")  # Snakemake's own view of what is complete
    planned = plan.stdout + plan.stderr
    assert plan.returncode == 0, planned[-3000:]
    unfinished = [b for b in BRANCHES if not (results / "retrain" / b / "metrics.json").exists()]
    assert planned.count("rule retrain:") == len(unfinished) > 0, planned[-3000:]
    for rule in ("prepare_data", "finetune", "prune"):
        assert f"rule {rule}:" not in planned, f"{rule} planned again"
    rerun = snakemake(workdir, "--cores", "4", "--set-threads", "retrain=1", "--until", "retrain",
                      "--rerun-incomplete")
    out = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, out[-4000:]
    for rule in ("prepare_data", "finetune", "prune"):
        assert f"rule {rule}:" not in out and f"Rule: {rule})" not in out, f"{rule} ran again"
    assert _mtimes(workdir, "data", "finetune", "prune") == earlier
    for branch in BRANCHES:
        assert json.loads((results / "retrain" / branch / "metrics.json").read_text())["train_steps"] > 0

    again = tracking.read_parent(results)
    assert again["parent_run_id"] == info["parent_run_id"]
    for run_id in killed_ids:
        run = mlc.get_run(run_id)
        assert run.info.status == "KILLED"
        assert run.data.tags["killed_reason"] == "process ended without closing its run"
    finished = {r.data.tags["mlflow.runName"] for r in _children(mlc, info, "retrain[") if r.info.status == "FINISHED"}
    assert finished == {f"retrain[{b}]" for b in BRANCHES}
    assert mlc.get_run(info["parent_run_id"]).info.status == "FINISHED"
