"""Helpers shared by the reliability tests: isolated MLflow stores, subprocess runners, free ports."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


_TEMPLATE_DB: Path | None = None


def sqlite_uri(folder: Path) -> str:
    """An MLflow SQLite tracking URI for a fresh, already migrated store inside ``folder``.

    Creating a store runs MLflow's schema migrations (seconds); they run once per test session into a
    template that each call copies.
    """
    global _TEMPLATE_DB
    if _TEMPLATE_DB is None:
        from mlflow.tracking import MlflowClient

        template = Path(tempfile.mkdtemp(prefix="et-reliability-")) / "template.db"
        MlflowClient(tracking_uri=f"sqlite:///{template}").search_experiments()
        _TEMPLATE_DB = template
    db = Path(folder) / "mlflow.db"
    if not db.exists():
        shutil.copyfile(_TEMPLATE_DB, db)
    return f"sqlite:///{db}"


def closed_port() -> int:
    """A local TCP port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env(**extra: str) -> dict[str, str]:
    """The current environment with the project importable, few threads, and ``extra`` on top."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(PROJECT_ROOT), str(PROJECT_ROOT / "tests"), env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    env.update(extra)
    return env


def run_python(args: list[str], timeout: float, env: dict[str, str] | None = None,
               cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``python <args>`` and capture its output; a hang fails the test via ``timeout``."""
    return subprocess.run([PYTHON, *args], capture_output=True, text=True, timeout=timeout,
                          env=env or subprocess_env(), cwd=cwd or PROJECT_ROOT)


def run_module(module: str, args: list[str], timeout: float, env: dict[str, str] | None = None,
               cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m <module> <args>`` (e.g. a stage) and capture its output."""
    return run_python(["-m", module, *args], timeout, env=env, cwd=cwd)
