"""Killed and failing stages end their MLflow runs as KILLED or FAILED: SIGTERM and exceptions are
handled in the stage; a SIGKILLed stage is marked KILLED by the next ``open_parent``."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pipeline_steps import tracking
from reliability_util import PROJECT_ROOT, PYTHON, sqlite_uri, subprocess_env


@pytest.fixture
def parent(tmp_path: Path, monkeypatch) -> tuple[Path, dict, dict]:
    """A run folder with an open parent run in a SQLite store of its own."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = {"tracking_uri": sqlite_uri(tmp_path), "artifact_root": str(tmp_path / "art"), "on_unreachable": "fail"}
    run_dir = tmp_path / "results" / "k"
    info = tracking.open_parent(run_dir, "k", cfg, {}, "h")
    return run_dir, cfg, info


def _start_stage(run_dir: Path, tmp_path: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    ready = tmp_path / "ready"
    proc = subprocess.Popen([PYTHON, str(PROJECT_ROOT / "tests" / "reliability_sleeper.py"), "--run-dir",
                             str(run_dir), "--stage", "finetune", "--ready", str(ready), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=subprocess_env())
    deadline = time.monotonic() + 90
    while not ready.exists():
        if proc.poll() is not None:
            break
        assert time.monotonic() < deadline, "stage never opened its run"
        time.sleep(0.05)
    return proc, ready.read_text() if ready.exists() else ""


def test_sigkilled_stage_is_marked_killed_on_next_invocation(tmp_path: Path, parent) -> None:
    """SIGKILL cannot be handled, so the run stays RUNNING; the next pipeline invocation (open_parent)
    marks it KILLED with a reason, re-opens the same parent, and keeps the logged metric."""
    run_dir, cfg, info = parent
    proc, run_id = _start_stage(run_dir, tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    mlc = tracking.client(cfg["tracking_uri"])
    assert mlc.get_run(run_id).info.status == "RUNNING"
    again = tracking.open_parent(run_dir, "k", cfg, {}, "h")
    assert again["parent_run_id"] == info["parent_run_id"]
    killed = mlc.get_run(run_id)
    assert killed.info.status == "KILLED"
    assert killed.data.tags["killed_reason"] == "process ended without closing its run"
    assert killed.data.metrics["progress"] == 1.0


def test_sigterm_ends_run_killed(tmp_path: Path, parent) -> None:
    """SIGTERM (what Snakemake sends on Ctrl-C/timeout) ends the run KILLED and the stage exits non-zero."""
    run_dir, cfg, _ = parent
    proc, run_id = _start_stage(run_dir, tmp_path)
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    assert tracking.client(cfg["tracking_uri"]).get_run(run_id).info.status == "KILLED"


def test_exception_ends_run_failed_with_error_tag(tmp_path: Path, parent) -> None:
    """A stage that raises ends FAILED, with the exception in the ``error`` tag, and exits non-zero."""
    run_dir, cfg, _ = parent
    proc, run_id = _start_stage(run_dir, tmp_path, "--fail")
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode != 0 and "deliberate failure" in out
    run = tracking.client(cfg["tracking_uri"]).get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == "RuntimeError: deliberate failure for the test"
