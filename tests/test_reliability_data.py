"""Bad data at the stage level: the failing stage names file, line and column, ends its MLflow run
FAILED, and writes no output; a later stage refuses a corrupted data folder the same way; lines
too long for the model are truncated with a counted warning, not an error.

(Per-file validation of every GLUE layout is unit-tested in test_glue.py and test_prepare_data.py.)
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from pipeline_steps import finetune, glue, modeling, prepare_data, tracking
from reliability_util import sqlite_uri

MRPC_HEADER = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
LONG = " ".join(["the committee postponed the vote on the harbour budget again"] * 6)


def _mrpc(rows: list[tuple[str, str, str]]) -> str:
    return MRPC_HEADER + "".join(f"{q}\t{2 * i}\t{2 * i + 1}\t{a}\t{b}\n" for i, (q, a, b) in enumerate(rows))


def _pairs(n: int, long_every: int = 0) -> list[tuple[str, str, str]]:
    rows = []
    for i in range(n):
        a = f"The price rose by {i} percent on Monday."
        b = LONG if long_every and i % long_every == 0 else f"On Monday the price went up {i} percent."
        rows.append((str(i % 2), a, b))
    return rows


def _data_params(local: Path) -> str:
    return json.dumps({"data": {"source": "local", "task": "mrpc", "local_dir": str(local), "max_train_examples": None,
                                "synthetic": {"n_train": 1, "n_dev": 1, "n_test": 1}}, "seed": 3})


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch) -> tuple[Path, str, dict]:
    """A run folder with an open MLflow parent in the test's own SQLite store."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = sqlite_uri(tmp_path)
    rd = tmp_path / "results" / "d"
    info = tracking.open_parent(rd, "d", {"tracking_uri": uri, "artifact_root": str(tmp_path / "art"),
                                          "on_unreachable": "fail"}, {}, "h")
    return rd, uri, info


def _children(uri: str, info: dict) -> list:
    return tracking.client(uri).search_runs([info["experiment_id"]],
                                            filter_string=f"tags.mlflow.parentRunId = '{info['parent_run_id']}'")


def _prepare(tmp_path: Path, rd: Path, files: dict[str, str]) -> tuple[int, Path]:
    local = tmp_path / "glue"
    local.mkdir(exist_ok=True)
    for name, text in files.items():
        (local / name).write_text(text)
    out = rd / "data"
    code = prepare_data.main(["--run-dir", str(rd), "--params", _data_params(local), "--out-dir", str(out)])
    return code, out


@pytest.mark.parametrize("dev, message", [
    (_mrpc([("1", "a", "b"), ("2", "c", "d")]), "dev.tsv:3 column 'Quality': label '2' is not one of the mrpc labels"),
    (MRPC_HEADER.replace("\t#2 String", "") + "1\t0\t1\ta\n", "dev.tsv: missing column(s) ['#2 String']"),
    (MRPC_HEADER, "dev.tsv: empty split (a header but no examples)"),
])
def test_data_error_fails_stage_run_and_writes_nothing(tmp_path: Path, run_dir, capsys, dev: str, message: str) -> None:
    """prepare_data on a bad local split: exit 1, the message names file/line/column, no data folder,
    and the stage's MLflow run is FAILED with the same message in its ``error`` tag."""
    rd, uri, info = run_dir
    code, out = _prepare(tmp_path, rd, {"train.tsv": _mrpc(_pairs(12)), "dev.tsv": dev})
    assert code == 1
    assert message in capsys.readouterr().err
    assert not out.exists() and not list(rd.glob(".data.tmp-*"))
    (run,) = _children(uri, info)
    assert run.data.tags["stage"] == "prepare_data" and run.info.status == "FAILED"
    assert message in run.data.tags["error"]


def _finetune_params(model_dir: Path, max_len: int) -> str:
    return json.dumps({"model": {"name_or_path": str(model_dir), "max_seq_length": max_len},
                       "finetune": {"epochs": 1, "batch_size": 8, "learning_rate": 1e-4, "weight_decay": 0.0,
                                    "warmup_ratio": 0.0, "device": "cpu"}, "seed": 3})


def test_later_stage_refuses_corrupted_data_and_writes_nothing(tmp_path: Path, run_dir, capsys, tiny_bert_dir) -> None:
    """A data folder damaged after prepare_data (dev.tsv lost a column): finetune exits 1 naming the
    file and column, before training, and no finetune output appears."""
    rd, _, _ = run_dir
    code, data = _prepare(tmp_path, rd, {"train.tsv": _mrpc(_pairs(12)), "dev.tsv": _mrpc(_pairs(4))})
    assert code == 0
    dev = data / "dev.tsv"
    dev.write_text("\n".join("\t".join(line.split("\t")[:-1]) for line in dev.read_text().splitlines()) + "\n")
    out = rd / "finetune"
    code = finetune.main(["--run-dir", str(rd), "--params", _finetune_params(tiny_bert_dir, 32),
                          "--data-dir", str(data), "--out-dir", str(out)])
    assert code == 1
    err = capsys.readouterr().err
    assert str(dev) in err and "missing column(s) ['#2 String']" in err
    assert not out.exists()


def test_long_lines_are_truncated_with_a_counted_warning(tmp_path: Path, run_dir, caplog, tiny_bert_dir) -> None:
    """Pairs longer than max_seq_length train fine: truncated to the limit, a warning with the count,
    and ``n_truncated_train``/``n_truncated_dev`` in metrics.json equal to an independent count."""
    rd, _, _ = run_dir
    train_rows, dev_rows = _pairs(24, long_every=3), _pairs(8, long_every=2)
    code, data = _prepare(tmp_path, rd, {"train.tsv": _mrpc(train_rows), "dev.tsv": _mrpc(dev_rows)})
    assert code == 0
    max_len = 24
    tok = modeling.load_tokenizer(tiny_bert_dir)
    expect = {split: sum(len(tok(e.text_a, e.text_b)["input_ids"]) > max_len for e in glue.read_split(data, split))
              for split in ("train", "dev")}
    assert expect == {"train": 8, "dev": 4}
    out = rd / "finetune"
    with caplog.at_level(logging.WARNING, logger="pipeline_steps.modeling"):
        code = finetune.main(["--run-dir", str(rd), "--params", _finetune_params(tiny_bert_dir, max_len),
                              "--data-dir", str(data), "--out-dir", str(out)])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["n_truncated_train"], metrics["n_truncated_dev"]) == (8, 4)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"8 of 24 examples were longer than {max_len} tokens and were truncated" in warnings
    assert f"4 of 8 examples were longer than {max_len} tokens and were truncated" in warnings
