"""What every stage module shares: its command line, atomic outputs, and metrics files.

A stage module ``pipeline_steps/<stage>.py`` exposes ``main(argv=None) -> int`` and runs as
``python -m pipeline_steps.<stage>``. Its parser starts from :func:`base_parser` (``--run-dir``,
``--params``, ``--threads``, ``--seed``); the Snakemake rule passes the config slice it uses as
``--params`` JSON (also declared under ``params:`` so a changed value reruns the stage).
Outputs are written under a temporary name and renamed at the end (:func:`atomic_dir`,
:func:`write_json`), so a killed stage never leaves output that looks complete.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

METRICS_FILE = "metrics.json"


def base_parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the options common to all stages."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--run-dir", type=Path, default=None,
                   help="results/<run_name> folder; its mlflow_parent.json names the MLflow parent run")
    p.add_argument("--params", type=json.loads, default={},
                   help="JSON object: the config slice this stage uses (see config.yaml)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch/OpenMP (0: library default)")
    p.add_argument("--seed", type=int, default=13, help="random seed")
    return p


def setup_runtime(threads: int, seed: int) -> None:
    """Seed Python/NumPy/torch and cap CPU threads."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    if threads > 0:
        os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        import torch

        torch.manual_seed(seed)
        if threads > 0:
            torch.set_num_threads(threads)
    except ImportError:
        pass


def _tmp_sibling(final: Path) -> Path:
    return final.with_name(f".{final.name}.tmp-{os.getpid()}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_siblings(final: Path) -> None:
    """Delete temporaries of ``final`` left by killed processes (their pid no longer exists)."""
    for stale in final.parent.glob(f".{final.name}.tmp-*"):
        pid = stale.name.rsplit("-", 1)[1]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary folder that replaces ``final`` only when the block succeeds."""
    final = Path(final)
    _remove_stale_siblings(final)
    tmp = _tmp_sibling(final)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final) if final.is_dir() else final.unlink()
    tmp.replace(final)


def write_json(path: Path, obj: Any) -> None:
    """Write JSON to a temporary name, then rename it into place."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_text(path: Path, text: str) -> None:
    """Write text to a temporary name, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    tmp.write_text(text)
    tmp.replace(path)


def read_json(path: Path) -> Any:
    """Read a JSON file; the error names the file."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read JSON: {exc}") from exc
