"""MLflow under stress: several stages logging to one SQLite store at once, and a tracking server
that is configured but unreachable (fails fast naming the URI, or falls back to the local store)."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from pipeline_steps import tracking
from reliability_util import PROJECT_ROOT, PYTHON, closed_port, run_python, sqlite_uri, subprocess_env

N_PROCS = 4
STEPS = 75
METRICS = 4


def _mlflow_cfg(uri: str, on_unreachable: str = "fail", artifact_root: str = "mlartifacts") -> dict:
    return {"tracking_uri": uri, "artifact_root": artifact_root, "on_unreachable": on_unreachable}


@pytest.fixture
def no_env_uri(monkeypatch):
    """Make the configured URI win: ``$MLFLOW_TRACKING_URI`` would override it."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_concurrent_stages_lose_no_metric(tmp_path: Path, no_env_uri) -> None:
    """Four processes log 75 steps x 4 metrics each into one SQLite store at the same instant:
    every process exits 0, no "database is locked" escapes, every value is stored."""
    uri = sqlite_uri(tmp_path)
    run_dir = tmp_path / "results" / "conc"
    info = tracking.open_parent(run_dir, "conc", _mlflow_cfg(uri, artifact_root=str(tmp_path / "art")), {}, "h")
    env = subprocess_env()
    go = tmp_path / "go"
    ready = [tmp_path / f"ready{i}" for i in range(N_PROCS)]
    procs = [
        subprocess.Popen(
            [PYTHON, str(PROJECT_ROOT / "tests" / "reliability_logger.py"), "--run-dir", str(run_dir),
             "--stage", f"stage{i}", "--steps", str(STEPS), "--metrics", str(METRICS),
             "--ready", str(ready[i]), "--go", str(go)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for i in range(N_PROCS)
    ]
    deadline = time.monotonic() + 120
    while not all(r.exists() for r in ready) and time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            break
        time.sleep(0.05)
    go.write_text("go")  # every run is open: all processes start logging at the same instant
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    for i, (p, out) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"stage{i} failed:\n{out[-3000:]}"
        assert "database is locked" not in out

    mlc = tracking.client(uri)
    runs = mlc.search_runs([info["experiment_id"]],
                           filter_string=f"tags.mlflow.parentRunId = '{info['parent_run_id']}'")
    assert sorted(r.data.tags["stage"] for r in runs) == [f"stage{i}" for i in range(N_PROCS)]
    for r in runs:
        assert r.info.status == "FINISHED"
        assert r.data.metrics["final"] == STEPS
        for m in range(METRICS):
            history = mlc.get_metric_history(r.info.run_id, f"m{m}")
            assert sorted(h.step for h in history) == list(range(STEPS)), (r.data.tags["stage"], f"m{m}")
            assert all(h.value == h.step * 10 + m for h in history)


def test_unreachable_server_fails_fast_naming_uri(tmp_path: Path, no_env_uri) -> None:
    """``mlflow.tracking_uri`` points at a closed port: open_parent raises TrackingError within
    seconds, the message names the URI, and no parent file is written."""
    uri = f"http://127.0.0.1:{closed_port()}"
    run_dir = tmp_path / "results" / "r"
    t0 = time.monotonic()
    with pytest.raises(tracking.TrackingError) as err:
        tracking.open_parent(run_dir, "r", _mlflow_cfg(uri), {}, "h")
    assert time.monotonic() - t0 < 10.0
    assert uri in str(err.value) and "unreachable" in str(err.value)
    assert not (run_dir / tracking.PARENT_FILE).exists()


def test_unreachable_server_falls_back_to_local_store(tmp_path: Path, no_env_uri, monkeypatch, capsys) -> None:
    """With ``on_unreachable: local`` the parent run goes to the local SQLite store, the console says
    so (naming both URIs), and stages then log there."""
    local = sqlite_uri(tmp_path)
    monkeypatch.setattr(tracking, "default_tracking_uri", lambda: local)
    uri = f"http://127.0.0.1:{closed_port()}"
    run_dir = tmp_path / "results" / "r"
    info = tracking.open_parent(run_dir, "r", _mlflow_cfg(uri, "local", str(tmp_path / "art")), {}, "h")
    said = capsys.readouterr().out
    assert uri in said and local in said
    assert info["tracking_uri"] == local
    with tracking.stage_run(run_dir, "stage", {"a": 1}) as run:
        run.log_metrics({"x": 1.0})
    stored = tracking.client(local).get_run(run.run_id)
    assert stored.data.metrics["x"] == 1.0
    assert stored.data.tags["mlflow.parentRunId"] == info["parent_run_id"]


def test_stage_fails_fast_when_parent_server_went_away(tmp_path: Path) -> None:
    """A stage whose parent record names a server that is down exits quickly with the URI in the
    error instead of retrying for minutes."""
    uri = f"http://127.0.0.1:{closed_port()}"
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / tracking.PARENT_FILE).write_text(
        f'{{"tracking_uri": "{uri}", "experiment_id": "1", "parent_run_id": "abc", "run_name": "r"}}')
    code = ("import sys; from pathlib import Path; from pipeline_steps import tracking\n"
            "with tracking.stage_run(Path(sys.argv[1]), 's', {}):\n    pass\n")
    t0 = time.monotonic()
    proc = run_python(["-c", code, str(run_dir)], timeout=60)
    assert time.monotonic() - t0 < 30.0  # interpreter + mlflow import dominate; the check itself is ~0 s
    assert proc.returncode != 0
    assert "TrackingError" in proc.stderr and uri in proc.stderr


class _SilentServer:
    """A TCP server that accepts connections and never answers (a hung tracking server)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self) -> None:
        for c in self.conns:
            c.close()
        self.sock.close()


def test_hung_server_times_out_naming_uri(tmp_path: Path) -> None:
    """A server that accepts but never answers: the request times out (MLFLOW_HTTP_REQUEST_TIMEOUT,
    no retries) and the error names the URI; the process does not hang."""
    server = _SilentServer()
    try:
        uri = f"http://127.0.0.1:{server.port}"
        code = ("import sys; from pathlib import Path; from pipeline_steps import tracking\n"
                "tracking.open_parent(Path(sys.argv[1]), 'r', {'tracking_uri': sys.argv[2], "
                "'artifact_root': 'mlartifacts', 'on_unreachable': 'fail'}, {}, 'h')\n")
        env = subprocess_env(MLFLOW_HTTP_REQUEST_TIMEOUT="3")
        env.pop("MLFLOW_TRACKING_URI", None)
        t0 = time.monotonic()
        proc = run_python(["-c", code, str(tmp_path / "r"), uri], timeout=90, env=env)
        elapsed = time.monotonic() - t0
    finally:
        server.close()
    assert proc.returncode != 0
    assert "127.0.0.1" in proc.stderr and str(server.port) in proc.stderr
    assert elapsed < 45.0, elapsed
    assert not (tmp_path / "r" / tracking.PARENT_FILE).exists()


def test_snakemake_with_unreachable_server_runs_no_stage(tmp_path: Path) -> None:
    """The whole workflow against a closed port: Snakemake's onstart fails within seconds naming the
    URI, before any job; no results/ or logs/ are written."""
    import yaml

    uri = f"http://127.0.0.1:{closed_port()}"
    cfg = yaml.safe_load((PROJECT_ROOT / "config.yaml").read_text())
    cfg["mlflow"]["tracking_uri"] = uri
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    env = subprocess_env()
    env.pop("MLFLOW_TRACKING_URI", None)
    t0 = time.monotonic()
    proc = subprocess.run([PYTHON, "-m", "snakemake", "-s", str(PROJECT_ROOT / "Snakefile"), "--configfile",
                           str(tmp_path / "config.yaml"), "--cores", "1", "--until", "prepare_data",
                           "--config", "preset=smoke"],
                          capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    elapsed = time.monotonic() - t0
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"MLflow tracking server {uri} is unreachable" in out, out[-2000:]
    assert elapsed < 30.0
    assert not (tmp_path / "results").exists() and not (tmp_path / "logs").exists()
