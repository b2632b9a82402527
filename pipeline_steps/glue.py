"""The nine GLUE tasks: their TSV layouts, reading and validating splits, and their metrics.

``prepare_data`` writes every split as ``<data_dir>/<split>.tsv`` in the task's GLUE column layout
(tab-separated, a header row, no quoting) plus ``<data_dir>/task.json``; every later stage reads them
back with :func:`read_task` and :func:`read_split`.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

TASK_FILE = "task.json"
SPLITS = ("train", "dev", "test")


class DataError(ValueError):
    """A data file does not have the expected layout or content; the message names file and column."""


@dataclass(frozen=True)
class TaskSpec:
    """One GLUE task: its label set, TSV columns and headline metric."""

    name: str
    labels: tuple[str, ...]  # label strings as they appear in the TSV (index = class id); () for regression
    columns: tuple[str, ...]  # header written by prepare_data (GLUE's own column names)
    text_a: str
    text_b: str | None
    label_column: str
    main_metric: str
    headerless: tuple[str, ...] = ()  # column names of GLUE files that have no header row (CoLA)

    @property
    def is_regression(self) -> bool:
        """True for STS-B (a similarity score), False for the classification tasks."""
        return not self.labels

    @property
    def num_labels(self) -> int:
        """Number of classifier outputs (1 for regression)."""
        return len(self.labels) or 1


_NLI = ("entailment", "not_entailment")
TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        TaskSpec("cola", ("0", "1"), ("source", "label", "original_label", "sentence"), "sentence", None, "label",
                 "matthews", headerless=("source", "label", "original_label", "sentence")),
        TaskSpec("sst2", ("0", "1"), ("sentence", "label"), "sentence", None, "label", "accuracy"),
        TaskSpec("mrpc", ("0", "1"), ("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"),
                 "#1 String", "#2 String", "Quality", "f1"),
        TaskSpec("qqp", ("0", "1"), ("id", "qid1", "qid2", "question1", "question2", "is_duplicate"),
                 "question1", "question2", "is_duplicate", "f1"),
        TaskSpec("stsb", (), ("index", "genre", "filename", "year", "old_index", "source1", "source2",
                              "sentence1", "sentence2", "score"), "sentence1", "sentence2", "score", "spearman"),
        TaskSpec("mnli", ("entailment", "neutral", "contradiction"),
                 ("index", "genre", "sentence1", "sentence2", "gold_label"), "sentence1", "sentence2",
                 "gold_label", "accuracy"),
        TaskSpec("qnli", _NLI, ("index", "question", "sentence", "label"), "question", "sentence", "label",
                 "accuracy"),
        TaskSpec("rte", _NLI, ("index", "sentence1", "sentence2", "label"), "sentence1", "sentence2", "label",
                 "accuracy"),
        TaskSpec("wnli", ("0", "1"), ("index", "sentence1", "sentence2", "label"), "sentence1", "sentence2",
                 "label", "accuracy"),
    )
}


@dataclass(frozen=True)
class Example:
    """One example: a sentence (or sentence pair) and its label (class id, or score; NaN when unlabeled)."""

    text_a: str
    text_b: str | None
    label: float


def get_task(name: str) -> TaskSpec:
    """The TaskSpec of a GLUE task name; the error lists the known tasks."""
    try:
        return TASKS[name]
    except KeyError:
        raise DataError(f"unknown GLUE task {name!r} (known: {', '.join(TASKS)})") from None


def read_task(data_dir: Path) -> TaskSpec:
    """The task described by ``<data_dir>/task.json`` (written by prepare_data)."""
    path = Path(data_dir) / TASK_FILE
    try:
        name = json.loads(path.read_text())["task"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: cannot read the task name: {exc}") from exc
    return get_task(name)


def label_to_float(task: TaskSpec, raw: str, where: str) -> float:
    """Parse one TSV label cell: a class id for classification, a score in [0, 5] for STS-B."""
    raw = raw.strip()
    if task.is_regression:
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not 0.0 <= value <= 5.0:
            raise DataError(f"{where}: label {raw!r} is not a similarity score in [0, 5]")
        return value
    if raw not in task.labels:
        raise DataError(f"{where}: label {raw!r} is not one of the {task.name} labels {list(task.labels)}")
    return float(task.labels.index(raw))


def label_to_text(task: TaskSpec, value: float) -> str:
    """Inverse of :func:`label_to_float` (empty for an unlabeled example)."""
    if math.isnan(value):
        return ""
    return f"{value:g}" if task.is_regression else task.labels[int(value)]


def _clean(text: str) -> str:
    return " ".join(str(text).split())


def read_split(data_dir: Path, split: str, task: TaskSpec | None = None) -> list[Example]:
    """Read ``<data_dir>/<split>.tsv``; train and dev must be labeled, test may lack the label column.

    Raises DataError naming the file (and column or line) for a missing file or column, an empty
    split, a wrong number of fields, or a label outside the task's label set.
    """
    data_dir = Path(data_dir)
    task = task or read_task(data_dir)
    return read_tsv(data_dir / f"{split}.tsv", task, require_labels=split != "test")


def read_tsv(path: Path, task: TaskSpec, require_labels: bool = True) -> list[Example]:
    """Read one GLUE TSV file of ``task`` (see :func:`read_split`)."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text: {exc}") from exc
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows:
        raise DataError(f"{path}: empty file (no header, no examples)")
    header, body, first_line = rows[0], rows[1:], 2
    if task.headerless and task.text_a not in header:
        header, body, first_line = list(task.headerless), rows, 1
    needed = [c for c in (task.text_a, task.text_b) if c]
    has_labels = task.label_column in header
    if require_labels and not has_labels:
        needed.append(task.label_column)
    missing = [c for c in needed if c not in header]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing} (header: {header})")
    if not body:
        raise DataError(f"{path}: empty split (a header but no examples)")
    ia = header.index(task.text_a)
    ib = header.index(task.text_b) if task.text_b else None
    il = header.index(task.label_column) if has_labels else None
    out = []
    for lineno, row in enumerate(body, start=first_line):
        where = f"{path}:{lineno}"
        if len(row) < len(header):
            raise DataError(f"{where}: {len(row)} fields, expected {len(header)} (columns {header})")
        label = math.nan
        if il is not None and (require_labels or row[il].strip()):
            label = label_to_float(task, row[il], f"{where} column {task.label_column!r}")
        out.append(Example(row[ia], row[ib] if ib is not None else None, label))
    return out


def write_split(path: Path, task: TaskSpec, examples: Iterable[Example], extra: Iterable[dict] | None = None) -> int:
    """Write examples as a GLUE TSV with ``task.columns``; ``extra`` rows fill the other columns (else empty).

    Tabs and newlines inside texts are turned into spaces. Returns the number of rows written.
    """
    extras = iter(extra) if extra is not None else None
    n = 0
    with Path(path).open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar=None, lineterminator="\n")
        writer.writerow(task.columns)
        for ex in examples:
            row = dict(next(extras)) if extras is not None else {}
            row[task.text_a] = _clean(ex.text_a)
            if task.text_b:
                row[task.text_b] = _clean(ex.text_b or "")
            row[task.label_column] = label_to_text(task, ex.label)
            writer.writerow([_clean(row.get(c, "")) for c in task.columns])
            n += 1
    return n


def _correlation(fn, a: np.ndarray, b: np.ndarray) -> float:
    if np.std(a) == 0 or np.std(b) == 0:
        return 0.0  # undefined for a constant series; reported as no correlation
    return float(fn(a, b)[0])


def compute_metrics(task: TaskSpec, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """GLUE metrics: ``accuracy`` (+ ``f1`` for binary tasks, ``matthews`` for CoLA); STS-B: ``pearson``, ``spearman``."""
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    if logits.ndim == 1:
        logits = logits[:, None]
    if logits.shape != (labels.size, task.num_labels):
        raise ValueError(f"logits shape {logits.shape} != ({labels.size}, {task.num_labels}) for task {task.name}")
    if labels.size == 0 or np.isnan(labels).any():
        raise ValueError("compute_metrics needs a non-empty, fully labeled split")
    if task.is_regression:
        preds = logits[:, 0]
        return {"pearson": _correlation(pearsonr, preds, labels), "spearman": _correlation(spearmanr, preds, labels)}
    preds = logits.argmax(axis=1)
    y = labels.astype(np.int64)
    out = {"accuracy": float(accuracy_score(y, preds))}
    if task.num_labels == 2:
        out["f1"] = float(f1_score(y, preds, zero_division=0))
    if task.name == "cola":
        out["matthews"] = float(matthews_corrcoef(y, preds))
    return out
