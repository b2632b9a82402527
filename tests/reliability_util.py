"""Helpers shared by the reliability tests: isolated MLflow stores, subprocess runners, free ports."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def sqlite_uri(folder: Path) -> str:
    """An MLflow SQLite tracking URI for a store inside ``folder``."""
    return f"sqlite:///{Path(folder) / 'mlflow.db'}"


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
