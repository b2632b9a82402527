"""Helpers of the tests that make a stage fail on bad input: a run folder with an MLflow parent, the
failed child run of a stage, and digests of the files earlier stages wrote (they must stay untouched)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from pipeline_steps import tracking


def open_run_dir(tmp_path: Path, name: str = "r") -> tuple[Path, dict]:
    """``<tmp_path>/results/<name>`` with an open MLflow parent run in the store of $MLFLOW_TRACKING_URI."""
    run_dir = tmp_path / "results" / name
    info = tracking.open_parent(run_dir, name, {"artifact_root": str(tmp_path / "art"), "on_unreachable": "fail"},
                                {}, "h")
    return run_dir, info


def only_child(info: dict, run_name: str):
    """The one child run named ``run_name`` under the parent described by ``info`` (asserted unique)."""
    runs = tracking.client(info["tracking_uri"]).search_runs(
        [info["experiment_id"]],
        filter_string=f"tags.mlflow.parentRunId = '{info['parent_run_id']}' and tags.mlflow.runName = '{run_name}'")
    assert len(runs) == 1, [r.data.tags.get("mlflow.runName") for r in runs]
    return runs[0]


def digests(*folders: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folders``, keyed by path."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for folder in folders for p in sorted(Path(folder).rglob("*")) if p.is_file()}


DAMAGES = ("missing", "not_utf8")


def damage_split(path: Path, how: str) -> str:
    """Delete a split file (``missing``) or overwrite it with bytes that are not UTF-8 (``not_utf8``);
    returns the start of the error message expected to name it."""
    if how == "missing":
        path.unlink()
        return f"{path}: cannot read: "
    if how == "not_utf8":
        path.write_bytes(b"Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t0\t1\t\xff\xfe\tb\n")
        return f"{path}: not UTF-8 text: "
    raise ValueError(f"unknown damage {how!r} (one of {DAMAGES})")
