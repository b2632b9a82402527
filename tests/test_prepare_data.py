"""prepare_data: synthetic/local/hub sources, validation errors, outputs and the BoW baseline."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline_steps import glue, prepare_data
from pipeline_steps.glue import DataError, Example

ROOT = Path(__file__).resolve().parent.parent


def _params(**data) -> str:
    base = {"source": "synthetic", "task": "mrpc", "local_dir": None, "max_train_examples": None,
            "synthetic": {"n_train": 400, "n_dev": 200, "n_test": 100}}
    base.update(data)
    return json.dumps({"data": base, "seed": 5})


def _run(tmp_path: Path, params: str, seed: int = 5) -> tuple[int, Path]:
    out = tmp_path / "run" / "data"
    code = prepare_data.main(["--run-dir", str(tmp_path / "run"), "--params", params, "--seed", str(seed),
                              "--out-dir", str(out)])
    return code, out


def test_synthetic_outputs_mrpc_format_and_baseline(tmp_path, mlflow_uri):
    code, out = _run(tmp_path, _params())
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["dev.tsv", "metrics.json", "task.json", "test.tsv", "train.tsv"]
    header = (out / "train.tsv").read_text().splitlines()[0].split("\t")
    assert header == ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]
    task = glue.read_task(out)
    assert task.name == "mrpc"
    assert len(glue.read_split(out, "train")) == 400 and len(glue.read_split(out, "test")) == 100
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_dev"] == 200 and metrics["train_majority_fraction"] == 0.5
    assert 0.3 < metrics["bow_baseline_accuracy"] < 0.7
    info = json.loads((out / "task.json").read_text())
    assert info["source"] == "synthetic" and sum(info["synthetic_kinds"]["train"].values()) == 400


def test_synthetic_is_deterministic_per_seed(tmp_path, mlflow_uri):
    _run(tmp_path / "a", _params())
    _run(tmp_path / "b", _params())
    _run(tmp_path / "c", _params(), seed=6)
    read = lambda d: (tmp_path / d / "run" / "data" / "train.tsv").read_text()
    assert read("a") == read("b") != read("c")


def test_bow_baseline_fits_an_easy_task():
    task = glue.TASKS["sst2"]
    train = [Example("good fine great" if i % 2 else "bad awful poor", None, float(i % 2)) for i in range(40)]
    assert prepare_data.bow_baseline(task, train, train[:10]) == {"bow_baseline_accuracy": 1.0}
    reg = glue.TASKS["stsb"]
    pairs = [Example("a " * (i % 5 + 1), "b", float(i % 5)) for i in range(40)]
    assert prepare_data.bow_baseline(reg, pairs, pairs)["bow_baseline_spearman"] > 0.9


def _write_local(folder: Path, task: str, rows: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in rows.items():
        (folder / name).write_text(text)
    return folder


RTE_HEADER = "index\tsentence1\tsentence2\tlabel\n"


def test_local_glue_folder(tmp_path, mlflow_uri):
    train = RTE_HEADER + "".join(f"{i}\tA man {i}.\tA person {i}.\t{'entailment' if i % 2 else 'not_entailment'}\n"
                                 for i in range(12))
    dev = RTE_HEADER + "0\tA cat.\tAn animal.\tentailment\n1\tA dog.\tA car.\tnot_entailment\n"
    local = _write_local(tmp_path / "glue_rte", "rte", {"train.tsv": train, "dev.tsv": dev,
                                                         "test.tsv": "index\tsentence1\tsentence2\n0\tx\ty\n"})
    code, out = _run(tmp_path, _params(source="local", task="rte", local_dir=str(local), max_train_examples=10))
    assert code == 0
    assert glue.read_task(out).name == "rte"
    assert [e.label for e in glue.read_split(out, "dev")] == [0.0, 1.0]
    assert len(glue.read_split(out, "train")) == 10
    (ex,) = glue.read_split(out, "test")
    assert ex.text_a == "x"


def test_local_mnli_uses_matched_dev(tmp_path):
    head = "index\tgenre\tsentence1\tsentence2\tgold_label\n"
    local = _write_local(tmp_path / "mnli", "mnli", {
        "train.tsv": head + "0\tg\ta\tb\tneutral\n1\tg\tc\td\tentailment\n",
        "dev_matched.tsv": head + "0\tg\ta\tb\tcontradiction\n"})
    splits = prepare_data.load_local(glue.TASKS["mnli"], local)
    assert [e.label for e in splits["dev"]] == [2.0] and splits["test"] == []


@pytest.mark.parametrize("files, message", [
    ({"train.tsv": "sentence\n good\n", "dev.tsv": "sentence\tlabel\nx\t1\n"},
     r"train\.tsv: missing column\(s\) \['label'\]"),
    ({"train.tsv": "sentence\tlabel\n", "dev.tsv": "sentence\tlabel\nx\t1\n"}, r"train\.tsv: empty split"),
    ({"train.tsv": "sentence\tlabel\na\t1\nb\tpositive\n", "dev.tsv": "sentence\tlabel\nx\t1\n"},
     r"train\.tsv:3 column 'label': label 'positive'"),
    ({"train.tsv": "sentence\tlabel\na\t1\n"}, r"has no dev\.tsv or dev_matched\.tsv"),
])
def test_local_validation_errors_name_file_and_column(tmp_path, mlflow_uri, capsys, files, message):
    local = _write_local(tmp_path / "sst", "sst2", files)
    code, out = _run(tmp_path, _params(source="local", task="sst2", local_dir=str(local)))
    assert code == 1 and not out.exists()
    assert __import__("re").search(message, capsys.readouterr().err)


def test_synthetic_requires_mrpc_task(tmp_path, capsys):
    code, out = _run(tmp_path, _params(task="sst2"))
    assert code == 2 and "set data.task: mrpc" in capsys.readouterr().err and not out.exists()


def test_hub_rows_become_examples():
    rows = [{"premise": "p", "hypothesis": "h", "label": 2, "idx": 0},
            {"premise": "p2", "hypothesis": "h2", "label": -1, "idx": 1}]
    a, b = prepare_data.hub_examples(glue.TASKS["mnli"], rows)
    assert (a.text_a, a.text_b, a.label) == ("p", "h", 2.0) and math.isnan(b.label)
    (single,) = prepare_data.hub_examples(glue.TASKS["sst2"], [{"sentence": "s", "label": 1, "idx": 0}])
    assert single.text_b is None and single.label == 1.0
    (score,) = prepare_data.hub_examples(glue.TASKS["stsb"], [{"sentence1": "a", "sentence2": "b", "label": 3.8}])
    assert score.label == pytest.approx(3.8)
    with pytest.raises(DataError, match="label 5 outside 0..1"):
        prepare_data.hub_examples(glue.TASKS["rte"], [{"sentence1": "a", "sentence2": "b", "label": 5}])


def test_hub_probe_reports_unreachable_quickly():
    started = time.monotonic()
    assert prepare_data.hub_reachable("http://127.0.0.1:9", timeout=2.0) is False
    assert time.monotonic() - started < 3.0


def test_hub_source_offline_fails_fast_naming_alternatives(tmp_path, mlflow_uri):
    """Without a reachable hub (a closed local port here) the stage fails in seconds, naming local and synthetic."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_HOME": str(tmp_path / "hf"),
           "PYTHONPATH": str(ROOT)}
    env.pop("HF_HUB_OFFLINE", None)
    env.pop("HF_DATASETS_OFFLINE", None)
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pipeline_steps.prepare_data", "--params",
                           _params(source="hub", task="cola"), "--run-dir", str(tmp_path / "run"),
                           "--out-dir", str(tmp_path / "run" / "data")],
                          env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    elapsed = time.monotonic() - started
    assert proc.returncode == 1, proc.stderr
    assert "source: local" in proc.stderr and "source: synthetic" in proc.stderr
    assert "nyu-mll/glue/cola" in proc.stderr
    assert elapsed < 30, elapsed  # the probe (at most 5 s) + interpreter and library start-up
    assert not (tmp_path / "run" / "data").exists()


def test_help_runs():
    proc = subprocess.run([sys.executable, "-m", "pipeline_steps.prepare_data", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "--out-dir" in proc.stdout
