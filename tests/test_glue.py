"""glue.py: task specs, TSV round trips and validation, metrics."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pipeline_steps import glue
from pipeline_steps.glue import DataError, Example


def test_all_nine_tasks_with_label_counts():
    assert set(glue.TASKS) == {"cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"}
    assert glue.TASKS["stsb"].num_labels == 1 and glue.TASKS["stsb"].is_regression
    assert glue.TASKS["mnli"].num_labels == 3
    assert all(t.num_labels == 2 and not t.is_regression for n, t in glue.TASKS.items() if n not in ("stsb", "mnli"))
    assert glue.TASKS["mrpc"].columns == ("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String")


@pytest.mark.parametrize("name", sorted(glue.TASKS))
def test_write_then_read_round_trip(tmp_path, name):
    task = glue.TASKS[name]
    labels = [2.5, 0.0, 5.0] if task.is_regression else [float(i % task.num_labels) for i in range(3)]
    pair = task.text_b is not None
    examples = [Example(f"sentence {i}\twith a tab", f"other {i}\nline" if pair else None, y)
                for i, y in enumerate(labels)]
    (tmp_path / "task.json").write_text(json.dumps({"task": name}))
    assert glue.write_split(tmp_path / "dev.tsv", task, examples) == 3
    back = glue.read_split(tmp_path, "dev")
    assert [e.label for e in back] == labels
    assert back[0].text_a == "sentence 0 with a tab"
    assert (back[0].text_b == "other 0 line") if pair else back[0].text_b is None


def test_unlabeled_test_split_reads_nan(tmp_path):
    task = glue.TASKS["rte"]
    glue.write_split(tmp_path / "test.tsv", task, [Example("a", "b", math.nan)])
    (ex,) = glue.read_split(tmp_path, "test", task)
    assert math.isnan(ex.label)
    with pytest.raises(DataError, match="dev.tsv.*label ''"):
        glue.write_split(tmp_path / "dev.tsv", task, [Example("a", "b", math.nan)])
        glue.read_split(tmp_path, "dev", task)


def test_headerless_cola_file(tmp_path):
    (tmp_path / "train.tsv").write_text("gj04\t1\t\tOur friends won't buy this.\ngj04\t0\t*\tThey drank the pub.\n")
    out = glue.read_split(tmp_path, "train", glue.TASKS["cola"])
    assert [e.label for e in out] == [1.0, 0.0] and out[1].text_a == "They drank the pub."


def test_missing_column_names_file_and_column(tmp_path):
    (tmp_path / "train.tsv").write_text("Quality\t#1 String\n1\thello\n")
    with pytest.raises(DataError, match=r"train\.tsv: missing column\(s\) \['#2 String'\]"):
        glue.read_split(tmp_path, "train", glue.TASKS["mrpc"])


def test_empty_split_is_an_error(tmp_path):
    task = glue.TASKS["sst2"]
    glue.write_split(tmp_path / "dev.tsv", task, [])
    with pytest.raises(DataError, match=r"dev\.tsv: empty split"):
        glue.read_split(tmp_path, "dev", task)
    (tmp_path / "train.tsv").write_text("")
    with pytest.raises(DataError, match=r"train\.tsv: empty file"):
        glue.read_split(tmp_path, "train", task)


def test_unknown_label_names_line_and_column(tmp_path):
    (tmp_path / "train.tsv").write_text("sentence\tlabel\ngood\t1\nbad\t7\n")
    with pytest.raises(DataError, match=r"train\.tsv:3 column 'label': label '7' is not one of"):
        glue.read_split(tmp_path, "train", glue.TASKS["sst2"])
    (tmp_path / "dev.tsv").write_text("index\tsentence1\tsentence2\tscore\n0\ta\tb\t6.5\n")
    with pytest.raises(DataError, match=r"not a similarity score"):
        glue.read_tsv(tmp_path / "dev.tsv", glue.TASKS["stsb"])


def test_short_row_and_missing_file(tmp_path):
    (tmp_path / "train.tsv").write_text("sentence\tlabel\ngood\n")
    with pytest.raises(DataError, match=r"train\.tsv:2: 1 fields, expected 2"):
        glue.read_split(tmp_path, "train", glue.TASKS["sst2"])
    with pytest.raises(DataError, match=r"nope\.tsv: cannot read"):
        glue.read_split(tmp_path, "nope", glue.TASKS["sst2"])


def test_read_task_errors(tmp_path):
    with pytest.raises(DataError, match="task.json"):
        glue.read_task(tmp_path)
    (tmp_path / "task.json").write_text(json.dumps({"task": "squad"}))
    with pytest.raises(DataError, match="unknown GLUE task 'squad'"):
        glue.read_task(tmp_path)


def test_binary_metrics_match_hand_computation():
    logits = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    labels = np.array([1, 0, 0, 1])
    m = glue.compute_metrics(glue.TASKS["mrpc"], logits, labels)
    assert m == {"accuracy": 0.75, "f1": pytest.approx(0.8)}  # tp=2 fp=1 fn=0


def test_cola_reports_matthews_and_mnli_has_no_f1():
    logits = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    m = glue.compute_metrics(glue.TASKS["cola"], logits, np.array([1, 0, 0, 1]))
    assert m["matthews"] == pytest.approx(1.0) and m["accuracy"] == 1.0
    m3 = glue.compute_metrics(glue.TASKS["mnli"], np.eye(3), np.array([0, 1, 1]))
    assert set(m3) == {"accuracy"} and m3["accuracy"] == pytest.approx(2 / 3)


def test_stsb_correlations():
    preds = np.array([[0.5], [1.0], [4.0], [3.0]])
    m = glue.compute_metrics(glue.TASKS["stsb"], preds, np.array([1.0, 2.0, 5.0, 4.0]))
    assert m["spearman"] == pytest.approx(1.0) and 0.9 < m["pearson"] < 1.0
    flat = glue.compute_metrics(glue.TASKS["stsb"], np.ones((3, 1)), np.array([1.0, 2.0, 3.0]))
    assert flat == {"pearson": 0.0, "spearman": 0.0}


def test_metric_input_errors():
    with pytest.raises(ValueError, match=r"logits shape \(2, 3\)"):
        glue.compute_metrics(glue.TASKS["sst2"], np.zeros((2, 3)), np.zeros(2))
    with pytest.raises(ValueError, match="fully labeled"):
        glue.compute_metrics(glue.TASKS["sst2"], np.zeros((1, 2)), np.array([math.nan]))
