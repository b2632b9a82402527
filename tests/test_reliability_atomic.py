"""Atomic outputs: a process killed (SIGKILL) while writing leaves no output that looks complete,
and the previous complete output, if any, is untouched; an exception leaves nothing behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pipeline_steps.stage import atomic_dir, write_json
from reliability_util import PYTHON, subprocess_env

WRITER = """
import sys, time
from pathlib import Path
from pipeline_steps.stage import atomic_dir, write_json
final, ready = Path(sys.argv[1]), Path(sys.argv[2])
if sys.argv[3] == "dir":
    with atomic_dir(final) as tmp:
        (tmp / "model").mkdir()
        (tmp / "model" / "weights.bin").write_bytes(b"x" * 1000)
        write_json(tmp / "metrics.json", {"accuracy": 0.5})
        ready.write_text("in the middle")
        time.sleep(60)
else:
    write_json(final, {"big": "y" * 1000})
    ready.write_text("written")
    time.sleep(60)
"""


def _start_writer(final: Path, ready: Path, kind: str) -> subprocess.Popen:
    proc = subprocess.Popen([PYTHON, "-c", WRITER, str(final), str(ready), kind], env=subprocess_env())
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert proc.poll() is None, "writer died early"
        assert time.monotonic() < deadline, "writer never got going"
        time.sleep(0.05)
    return proc


def test_sigkill_inside_atomic_dir_leaves_previous_output(tmp_path: Path) -> None:
    """Killed half-way through rewriting a stage folder: the old complete folder is still there,
    unchanged; no partial file appears under the final name."""
    final = tmp_path / "finetune"
    final.mkdir()
    write_json(final / "metrics.json", {"accuracy": 0.9})
    before = (final / "metrics.json").read_bytes()
    proc = _start_writer(final, tmp_path / "ready", "dir")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert sorted(p.name for p in final.iterdir()) == ["metrics.json"]
    assert (final / "metrics.json").read_bytes() == before


def test_sigkill_inside_atomic_dir_leaves_no_output(tmp_path: Path) -> None:
    """Killed during the first write: the final folder does not exist at all (Snakemake sees a
    missing output, not a complete one); only a hidden temporary sibling remains."""
    final = tmp_path / "export_npy"
    proc = _start_writer(final, tmp_path / "ready", "dir")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert not final.exists()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name not in ("ready",)]
    assert all(name.startswith(".export_npy.tmp-") for name in leftovers), leftovers


def test_write_json_is_all_or_nothing(tmp_path: Path) -> None:
    """A JSON file written with write_json is either absent or complete and parseable."""
    final = tmp_path / "metrics.json"
    proc = _start_writer(final, tmp_path / "ready", "file")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert json.loads(final.read_text())["big"] == "y" * 1000


def test_exception_inside_atomic_dir_removes_temporary(tmp_path: Path) -> None:
    """A stage that raises leaves neither the final folder nor its temporary sibling."""
    final = tmp_path / "prune"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_dir(final) as tmp:
            (tmp / "masks.json").write_text("{}")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_rerun_after_kill_replaces_cleanly(tmp_path: Path) -> None:
    """After a killed attempt, the next attempt's atomic_dir produces exactly its own files and
    removes the dead attempt's temporary folder."""
    final = tmp_path / "retrain"
    proc = _start_writer(final, tmp_path / "ready", "dir")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert (tmp_path / f".retrain.tmp-{proc.pid}").is_dir()
    with atomic_dir(final) as tmp:
        write_json(tmp / "metrics.json", {"accuracy": 0.8})
    assert sorted(p.name for p in final.iterdir()) == ["metrics.json"]
    assert json.loads((final / "metrics.json").read_text()) == {"accuracy": 0.8}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ready", "retrain"]


def test_live_writers_temporary_is_left_alone(tmp_path: Path) -> None:
    """A temporary whose process is still running is not touched by another writer of the same name."""
    final = tmp_path / "prune"
    proc = _start_writer(final, tmp_path / "ready", "dir")
    try:
        with atomic_dir(final) as tmp:
            write_json(tmp / "metrics.json", {})
        assert (tmp_path / f".prune.tmp-{proc.pid}" / "metrics.json").exists()
    finally:
        proc.kill()
        proc.wait(timeout=30)
