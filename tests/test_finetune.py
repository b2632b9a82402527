"""finetune stage: trains a tiny BERT on prepared data, writes model + metrics, logs to MLflow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline_steps import finetune, glue, modeling, prepare_data, tracking
from stage_failures import DAMAGES, damage_split, digests, only_child, open_run_dir

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def data_dir(tmp_path, mlflow_uri) -> Path:
    params = {"data": {"source": "synthetic", "task": "mrpc", "local_dir": None, "max_train_examples": None,
                       "synthetic": {"n_train": 64, "n_dev": 32, "n_test": 8}}, "seed": 1}
    out = tmp_path / "run" / "data"
    assert prepare_data.main(["--run-dir", str(tmp_path / "run"), "--params", json.dumps(params),
                              "--out-dir", str(out)]) == 0
    return out


def _params(model: Path, epochs: int = 2) -> dict:
    return {"model": {"name_or_path": str(model), "max_seq_length": 48},
            "finetune": {"epochs": epochs, "batch_size": 16, "learning_rate": 1e-3, "weight_decay": 0.01,
                         "warmup_ratio": 0.1, "device": "cpu"}, "seed": 3}


def test_finetune_writes_model_metrics_and_mlflow_run(tmp_path, data_dir, tiny_bert_dir, mlflow_uri):
    out = tmp_path / "run" / "finetune"
    argv = ["--run-dir", str(tmp_path / "run"), "--params", json.dumps(_params(tiny_bert_dir)),
            "--data-dir", str(data_dir), "--out-dir", str(out), "--threads", "1"]
    assert finetune.main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"accuracy", "f1", "glue_metric", "train_seconds", "n_train"} <= set(metrics)
    assert metrics["glue_metric_name"] == "f1" and metrics["glue_metric"] == metrics["f1"]
    assert metrics["train_steps"] == 2 * 4 and metrics["n_dev"] == 32 and metrics["device"] == "cpu"
    assert (out / "model" / "model.safetensors").is_file()
    reloaded = modeling.load_classifier(out / "model")
    assert reloaded.config.num_labels == 2

    mlc = tracking.client(mlflow_uri)
    (exp,) = [e for e in mlc.search_experiments() if e.name == "run"]
    (run,) = mlc.search_runs([exp.experiment_id], filter_string="tags.stage = 'finetune'")
    assert run.info.status == "FINISHED"
    assert run.data.metrics["accuracy"] == pytest.approx(metrics["accuracy"])
    assert run.data.tags["checkpoint_path"] == str(out.resolve() / "model")
    assert run.data.params["finetune.learning_rate"] == "0.001"
    assert [m.step for m in mlc.get_metric_history(run.info.run_id, "train.loss")] == list(range(1, 9))
    assert len(mlc.get_metric_history(run.info.run_id, "train.lr")) == 8
    assert [m.step for m in mlc.get_metric_history(run.info.run_id, "dev.accuracy")] == [4, 8]

    # same seed, same data: the same weights and the same metrics
    again = tmp_path / "again"
    assert finetune.main(argv[:-4] + ["--out-dir", str(again), "--threads", "1"]) == 0
    assert json.loads((again / "metrics.json").read_text())["accuracy"] == metrics["accuracy"]


def test_bad_model_path_fails_cleanly_and_writes_nothing(tmp_path, data_dir, mlflow_uri, capsys):
    out = tmp_path / "run" / "finetune"
    params = _params(tmp_path / "missing" / "model")
    code = finetune.main(["--run-dir", str(tmp_path / "run"), "--params", json.dumps(params),
                          "--data-dir", str(data_dir), "--out-dir", str(out)])
    assert code == 1 and not out.exists()
    assert "is not an existing model folder" in capsys.readouterr().err


def test_missing_params_section(tmp_path, capsys):
    assert finetune.main(["--params", "{}", "--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "o")]) == 2
    assert "'model'" in capsys.readouterr().err


def test_failed_stage_marks_its_run_failed(tmp_path, mlflow_uri, tiny_bert_dir):
    data = tmp_path / "data"
    data.mkdir()
    (data / "task.json").write_text(json.dumps({"task": "mrpc"}))
    glue.write_split(data / "train.tsv", glue.TASKS["mrpc"], [glue.Example("a", "b", 1.0)] * 4)
    (data / "dev.tsv").write_text("Quality\t#1 ID\n")  # missing the text columns
    code = finetune.main(["--run-dir", str(tmp_path / "run"), "--params", json.dumps(_params(tiny_bert_dir)),
                          "--data-dir", str(data), "--out-dir", str(tmp_path / "run" / "finetune")])
    assert code == 1
    mlc = tracking.client(mlflow_uri)
    (exp,) = [e for e in mlc.search_experiments() if e.name == "run"]
    (run,) = mlc.search_runs([exp.experiment_id])
    assert run.info.status == "FAILED" and "missing column" in run.data.tags["error"]


@pytest.mark.parametrize("damage", DAMAGES)
def test_bad_dev_split_fails_the_child_run_and_keeps_earlier_outputs(tmp_path, mlflow_uri, tiny_bert_dir, capsys,
                                                                       damage):
    """A missing or non-UTF-8 dev.tsv: exit 1 with one error line naming the file, the finetune child run
    FAILED with the same message, the data folder and the previous finetune output byte for byte unchanged."""
    run_dir, info = open_run_dir(tmp_path)
    data = run_dir / "data"
    data.mkdir(parents=True)
    (data / "task.json").write_text(json.dumps({"task": "mrpc"}))
    for split in ("train", "dev"):
        glue.write_split(data / f"{split}.tsv", glue.TASKS["mrpc"], [glue.Example("a cat", "a dog", 1.0)] * 4)
    expected = damage_split(data / "dev.tsv", damage)
    out = run_dir / "finetune"
    out.mkdir()
    (out / "metrics.json").write_text('{"accuracy": 0.5}\n')  # the output of an earlier successful run
    before = digests(data, out)
    code = finetune.main(["--run-dir", str(run_dir), "--params", json.dumps(_params(tiny_bert_dir)),
                          "--data-dir", str(data), "--out-dir", str(out)])
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"finetune: error: {expected}") and "\n" not in err
    run = only_child(info, "finetune")
    assert run.info.status == "FAILED" and expected in run.data.tags["error"]
    assert digests(data, out) == before and not list(run_dir.glob(".finetune.tmp-*"))


def test_help_runs():
    proc = subprocess.run([sys.executable, "-m", "pipeline_steps.finetune", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "--data-dir" in proc.stdout
