"""tracking.py: parent/child runs, re-opening a parent, stale children, batched metrics, lock retries."""

from __future__ import annotations

import json

import pytest

from pipeline_steps import tracking

CFG = {"tracking_uri": None, "artifact_root": "art", "on_unreachable": "fail"}


def _children(mlc, info):
    return mlc.search_runs([info["experiment_id"]],
                           filter_string=f"tags.mlflow.parentRunId = '{info['parent_run_id']}'")


def test_parent_and_child_runs(tmp_path, mlflow_uri, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "results" / "exp1"
    info = tracking.open_parent(run_dir, "exp1", CFG, {"seed": 3, "presets": {"x": {}}}, "h1")
    assert json.loads((run_dir / tracking.PARENT_FILE).read_text()) == info
    assert info["tracking_uri"] == mlflow_uri
    mlc = tracking.client(mlflow_uri)
    exp = mlc.get_experiment(info["experiment_id"])
    assert exp.name == "exp1" and exp.artifact_location == (tmp_path / "art" / "exp1").as_uri()
    parent = mlc.get_run(info["parent_run_id"])
    assert parent.data.params == {"seed": "3"} and parent.data.tags["config_hash"] == "h1"
    assert parent.data.tags["backend"] in ("cpu", "cuda")

    with tracking.stage_run(run_dir, "finetune", {"finetune": {"lr": 0.1}}, tags={"task": "mrpc"}) as run:
        run.log_metric_rows([({"loss": 1.0, "lr": 0.1, "name": "skipped"}, 1), ({"loss": 0.5}, 2)])
        run.log_metrics({"accuracy": 0.9})
        (tmp_path / "a.txt").write_text("x")
        run.log_artifact(tmp_path / "a.txt")
    (child,) = _children(mlc, info)
    assert child.info.status == "FINISHED" and child.data.tags["stage"] == "finetune"
    assert child.data.tags["task"] == "mrpc" and child.data.params == {"finetune.lr": "0.1"}
    assert [(m.step, m.value) for m in mlc.get_metric_history(child.info.run_id, "loss")] == [(1, 1.0), (2, 0.5)]
    assert "name" not in child.data.metrics
    assert [a.path for a in mlc.list_artifacts(child.info.run_id)] == ["a.txt"]

    # a second pipeline invocation re-opens the same parent; a child left RUNNING is marked KILLED
    stale = mlc.create_run(info["experiment_id"], tags={"mlflow.parentRunId": info["parent_run_id"]})
    again = tracking.open_parent(run_dir, "exp1", CFG, {"seed": 3}, "h2")
    assert again["parent_run_id"] == info["parent_run_id"]
    assert mlc.get_run(stale.info.run_id).info.status == "KILLED"
    assert mlc.get_run(info["parent_run_id"]).data.tags["config_hash"] == "h2"

    (run_dir / "summary.json").write_text("{}")
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "finetune.log").write_text("epoch 1\n")
    tracking.close_parent(run_dir, "FINISHED", logs)
    parent = mlc.get_run(info["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert sorted(a.path for a in mlc.list_artifacts(info["parent_run_id"])) == ["logs", "summary.json"]
    assert [a.path for a in mlc.list_artifacts(info["parent_run_id"], "logs")] == ["logs/finetune.log"]


def test_failing_stage_marks_run_failed_with_the_error(tmp_path, mlflow_uri, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "r"
    info = tracking.open_parent(run_dir, "r", CFG, {}, "h")
    with pytest.raises(ValueError, match="bad data"):
        with tracking.stage_run(run_dir, "prepare_data", {}):
            raise ValueError("bad data")
    (child,) = _children(tracking.client(mlflow_uri), info)
    assert child.info.status == "FAILED" and child.data.tags["error"] == "ValueError: bad data"


def test_standalone_stage_without_parent(tmp_path, mlflow_uri):
    with tracking.stage_run(tmp_path / "solo", "finetune", {}) as run:
        run.log_metrics({"accuracy": 1.0})
    mlc = tracking.client(mlflow_uri)
    assert mlc.get_experiment(run.experiment_id).name == "solo"
    assert mlc.get_run(run.run_id).info.status == "FINISHED"


def test_retry_waits_out_a_locked_database(monkeypatch):
    monkeypatch.setattr(tracking.time, "sleep", lambda s: None)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return "ok"

    assert tracking._retry(flaky) == "ok" and len(calls) == 3
    with pytest.raises(KeyError):
        tracking._retry(lambda: {}["missing"])  # other errors are not retried


def test_tracking_uri_precedence(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.resolve_tracking_uri(None) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert tracking.resolve_tracking_uri("sqlite:///x.db") == "sqlite:///x.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")
    assert tracking.resolve_tracking_uri("sqlite:///x.db") == "sqlite:///env.db"
