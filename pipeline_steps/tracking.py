"""MLflow conventions of the pipeline: one experiment per run name, one parent run per pipeline
run folder (``results/<run_name>``), one child run per stage execution.

The Snakefile's ``onstart`` opens (or re-opens) the parent and writes ``results/<run>/mlflow_parent.json``;
each stage opens a child run under it with :func:`stage_run`; ``onsuccess``/``onerror`` close the parent.
Rerunning a stage adds a new child run under the same parent. Every store call is retried while a
SQLite store reports "database is locked", so stages running at once lose nothing.
"""

from __future__ import annotations

import json
import os
import platform
import random
import signal
import socket
import subprocess
import time
import urllib.parse
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from .config import PROJECT_ROOT

PARENT_FILE = "mlflow_parent.json"
T = TypeVar("T")

# Fail fast against an unreachable tracking server instead of retrying for minutes.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


class TrackingError(RuntimeError):
    """The tracking store cannot be used; the message names the URI."""


def default_tracking_uri() -> str:
    """``sqlite:///<working directory>/mlflow.db``: next to ``results/`` (the repository when run from there)."""
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def resolve_tracking_uri(configured: str | None) -> str:
    """``$MLFLOW_TRACKING_URI``, else the configured URI, else the project's SQLite store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or configured or default_tracking_uri()


def _retry(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``fn``, retrying for up to two minutes while SQLite says the database is locked."""
    deadline = time.monotonic() + 120.0
    delay = 0.05
    while True:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # MLflow wraps SQLAlchemy's OperationalError in MlflowException
            if "database is locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay * (1.0 + random.random()))
            delay = min(delay * 2.0, 2.0)


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Raise TrackingError within ``timeout`` seconds if an http(s) tracking server does not answer."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        return
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            pass
    except OSError as exc:
        raise TrackingError(f"MLflow tracking server {uri} is unreachable: {exc}") from exc


def client(uri: str):
    """An ``MlflowClient`` for ``uri``."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def git_commit() -> str:
    """``$ET_GIT_COMMIT`` when set (a copied tree, e.g. on a lent GPU machine, whose ``.git`` may be absent or
    stale), else HEAD of the repository."""
    if os.environ.get("ET_GIT_COMMIT"):
        return os.environ["ET_GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_tags() -> dict[str, str]:
    """``backend`` and ``device`` tags for the machine this process runs on."""
    try:
        import torch

        if torch.cuda.is_available():
            return {"backend": "cuda", "device": torch.cuda.get_device_name(0)}
    except ImportError:
        pass
    return {"backend": "cpu", "device": platform.processor() or platform.machine()}


def _ensure_experiment(mlc, name: str, artifact_root: str) -> str:
    exp = _retry(mlc.get_experiment_by_name, name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            _retry(mlc.restore_experiment, exp.experiment_id)
        return exp.experiment_id
    root = Path(artifact_root)
    if not root.is_absolute():
        root = Path.cwd() / root
    location = (root / name).as_uri()
    try:
        return _retry(mlc.create_experiment, name, artifact_location=location)
    except Exception:  # created concurrently by another process
        exp = _retry(mlc.get_experiment_by_name, name)
        if exp is None:
            raise
        return exp.experiment_id


def open_parent(run_dir: Path, run_name: str, mlflow_cfg: dict, config: dict, cfg_hash: str) -> dict:
    """Create or re-open the parent run of ``run_dir``; write and return its ``mlflow_parent.json``.

    Child runs of earlier invocations still marked RUNNING belong to killed processes and are
    marked KILLED here.
    """
    uri = resolve_tracking_uri(mlflow_cfg.get("tracking_uri"))
    try:
        check_reachable(uri)
    except TrackingError:
        if mlflow_cfg.get("on_unreachable") != "local":
            raise
        local = default_tracking_uri()
        print(f"[et-pipeline] {uri} is unreachable; logging to the local store {local} instead")
        uri = local
    mlc = client(uri)
    exp_id = _ensure_experiment(mlc, run_name, mlflow_cfg.get("artifact_root", "mlartifacts"))
    run_dir.mkdir(parents=True, exist_ok=True)
    parent_path = run_dir / PARENT_FILE
    parent_id = None
    if parent_path.exists():
        try:
            old = json.loads(parent_path.read_text())
            if old.get("tracking_uri") == uri:
                run = _retry(mlc.get_run, old["parent_run_id"])
                if run.info.lifecycle_stage == "active":
                    parent_id = run.info.run_id
        except Exception:
            parent_id = None
    if parent_id is None:
        tags = {"mlflow.runName": f"pipeline:{run_name}", "git_commit": git_commit(), "config_hash": cfg_hash,
                "kind": "pipeline", **device_tags()}
        parent_id = _retry(mlc.create_run, exp_id, tags=tags).info.run_id
        flat = _flatten({k: v for k, v in config.items() if k != "presets"})
        _log_params(mlc, parent_id, flat)
    else:
        _retry(mlc.update_run, parent_id, status="RUNNING")
        _retry(mlc.set_tag, parent_id, "config_hash", cfg_hash)
        _retry(mlc.set_tag, parent_id, "git_commit", git_commit())
        _mark_stale_children(mlc, exp_id, parent_id)
    info = {"tracking_uri": uri, "experiment_id": exp_id, "parent_run_id": parent_id, "run_name": run_name}
    tmp = parent_path.with_name(parent_path.name + ".tmp")
    tmp.write_text(json.dumps(info, indent=2))
    tmp.replace(parent_path)
    return info


def _mark_stale_children(mlc, exp_id: str, parent_id: str) -> None:
    runs = _retry(mlc.search_runs, [exp_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
    for run in runs:
        if run.info.status == "RUNNING":
            _retry(mlc.set_tag, run.info.run_id, "killed_reason", "process ended without closing its run")
            _retry(mlc.set_terminated, run.info.run_id, status="KILLED")


def close_parent(run_dir: Path, status: str, logs_dir: Path | None = None) -> None:
    """End the parent run of ``run_dir`` with ``status`` (FINISHED or FAILED).

    Logs summary.json (when finished) and, whatever the status, the stage logs in ``logs_dir``
    (complete only now, since each stage's console output is tee'd into its log file).
    """
    info = read_parent(run_dir)
    if info is None:
        return
    mlc = client(info["tracking_uri"])
    summary = run_dir / "summary.json"
    if status == "FINISHED" and summary.exists():
        _retry(mlc.log_artifact, info["parent_run_id"], str(summary))
    if logs_dir is not None and Path(logs_dir).is_dir():
        _retry(mlc.log_artifacts, info["parent_run_id"], str(logs_dir), "logs")
    _retry(mlc.set_terminated, info["parent_run_id"], status=status)


def read_parent(run_dir: Path | None) -> dict | None:
    """The parent-run record of ``run_dir``, or None when there is none."""
    if run_dir is None:
        return None
    path = Path(run_dir) / PARENT_FILE
    if not path.exists():
        return None
    return json.loads(path.read_text())


def _flatten(obj: Any, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = json.dumps(obj) if isinstance(obj, (list, type(None), bool)) else str(obj)
    return out


def _log_params(mlc, run_id: str, flat: dict[str, str]) -> None:
    from mlflow.entities import Param

    params = [Param(k, v[:6000]) for k, v in flat.items()]
    for i in range(0, len(params), 100):
        _retry(mlc.log_batch, run_id, params=params[i : i + 100])


class StageRun:
    """A child run of the pipeline's parent: metrics, params, tags and artifacts of one stage."""

    def __init__(self, mlc, run_id: str, experiment_id: str) -> None:
        self.client = mlc
        self.run_id = run_id
        self.experiment_id = experiment_id

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Log numeric metrics (non-numeric values are skipped) at ``step``."""
        self.log_metric_rows([(metrics, step or 0)])

    def log_metric_rows(self, rows: list[tuple[dict[str, float], int]]) -> None:
        """Log several ``(metrics, step)`` rows in as few store writes as possible (non-numeric values skipped)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [
            Metric(k, float(v), now, step)
            for metrics, step in rows
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        ]
        for i in range(0, len(batch), 500):
            _retry(self.client.log_batch, self.run_id, metrics=batch[i : i + 500])

    def log_params(self, params: dict[str, Any]) -> None:
        """Log a (nested) parameter dict, flattened with dots."""
        _log_params(self.client, self.run_id, _flatten(params))

    def set_tags(self, tags: dict[str, Any]) -> None:
        """Set string tags."""
        for k, v in tags.items():
            _retry(self.client.set_tag, self.run_id, k, str(v))

    def log_artifact(self, path: Path | str, artifact_path: str | None = None) -> None:
        """Copy a file or a folder into the run's artifacts."""
        path = Path(path)
        if path.is_dir():
            _retry(self.client.log_artifacts, self.run_id, str(path), artifact_path)
        else:
            _retry(self.client.log_artifact, self.run_id, str(path), artifact_path)


class _Terminated(BaseException):
    """Raised in the main thread when SIGTERM arrives, so the run is closed as KILLED."""


@contextmanager
def stage_run(run_dir: Path | None, stage: str, params: dict[str, Any], tags: dict[str, Any] | None = None) -> Iterator[StageRun]:
    """Open a child run for ``stage`` under ``run_dir``'s parent (or a standalone run when there is none).

    The run ends FINISHED on success, FAILED on an exception, KILLED on SIGTERM/SIGINT; the
    exception is re-raised so the stage exits non-zero.
    """
    info = read_parent(run_dir)
    if info is None:
        uri = resolve_tracking_uri(None)
        check_reachable(uri)
        mlc = client(uri)
        name = Path(run_dir).name if run_dir else "standalone"
        exp_id = _ensure_experiment(mlc, name, "mlartifacts")
        parent_tags: dict[str, str] = {}
    else:
        check_reachable(info["tracking_uri"])
        mlc = client(info["tracking_uri"])
        exp_id = info["experiment_id"]
        parent_tags = {"mlflow.parentRunId": info["parent_run_id"]}
    all_tags = {"mlflow.runName": stage, "stage": stage, "git_commit": git_commit(), **device_tags(), **parent_tags}
    all_tags.update({k: str(v) for k, v in (tags or {}).items()})
    run_id = _retry(mlc.create_run, exp_id, tags=all_tags).info.run_id
    run = StageRun(mlc, run_id, exp_id)
    run.log_params(params)

    def _on_term(signum, frame):  # noqa: ARG001
        raise _Terminated(f"signal {signum}")

    old_term = signal.signal(signal.SIGTERM, _on_term)
    try:
        yield run
    except (_Terminated, KeyboardInterrupt):
        _retry(mlc.set_terminated, run_id, status="KILLED")
        raise
    except BaseException as exc:
        _retry(mlc.set_tag, run_id, "error", f"{type(exc).__name__}: {exc}"[:5000])
        _retry(mlc.set_terminated, run_id, status="FAILED")
        raise
    else:
        _retry(mlc.set_terminated, run_id, status="FINISHED")
    finally:
        signal.signal(signal.SIGTERM, old_term)
