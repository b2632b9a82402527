"""Stage ``prepare_data``: train/dev/test splits in GLUE TSV format, plus a bag-of-words baseline.

Sources (``data.source``): ``synthetic`` (the seeded paraphrase task of :mod:`synthetic`, MRPC columns),
``hub`` (a GLUE task through ``datasets.load_dataset("nyu-mll/glue", task)``) or ``local`` (a folder of
GLUE TSVs, validated). Writes ``train.tsv``, ``dev.tsv``, ``test.tsv``, ``task.json`` and ``metrics.json``
(with ``bow_baseline_accuracy``: a logistic regression on the words of each sentence, fit on train and
scored on dev; ``bow_baseline_spearman`` for STS-B).
"""

from __future__ import annotations

import math
import os
import random
import socket
import sys
import urllib.parse
from pathlib import Path

import numpy as np

from . import glue, synthetic, tracking
from .glue import DataError, Example, TaskSpec
from .stage import atomic_dir, base_parser, setup_runtime, write_json

HUB_DATASET = "nyu-mll/glue"
# task -> (text_a field, text_b field) of the hub dataset
HUB_FIELDS: dict[str, tuple[str, str | None]] = {
    "cola": ("sentence", None), "sst2": ("sentence", None), "mrpc": ("sentence1", "sentence2"),
    "qqp": ("question1", "question2"), "stsb": ("sentence1", "sentence2"), "mnli": ("premise", "hypothesis"),
    "qnli": ("question", "sentence"), "rte": ("sentence1", "sentence2"), "wnli": ("sentence1", "sentence2"),
}
# our split -> (hub split, file names tried in a local GLUE folder); MNLI uses the matched sets
SPLIT_SOURCES = {"train": ("train", ("train.tsv",)),
                 "dev": ("validation", ("dev.tsv", "dev_matched.tsv")),
                 "test": ("test", ("test.tsv", "test_matched.tsv"))}
HUB_PROBE_TIMEOUT_S = 5.0
BOW_MAX_TRAIN = 50_000


def _alternatives() -> str:
    return ("use `data.source: local` with `data.local_dir` pointing to GLUE TSV files, "
            "or `data.source: synthetic` (needs no download)")


def hub_reachable(endpoint: str | None = None, timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the Hugging Face endpoint opens within ``timeout`` seconds."""
    url = urllib.parse.urlparse(endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def load_hub(task: TaskSpec) -> dict[str, list[Example]]:
    """All three splits of a GLUE task from the hub (or the local datasets cache when offline).

    Without a connection the hub libraries are switched to offline mode before they are imported, so
    a cached copy still loads and a missing one fails at once with a DataError naming the alternatives.
    """
    if not hub_reachable():
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["HF_DATASETS_OFFLINE"] = "1"
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"
    try:
        import datasets

        ds = datasets.load_dataset(HUB_DATASET, task.name)
    except Exception as exc:  # datasets raises ConnectionError, OSError, ValueError... depending on the mode
        why = "the Hugging Face hub is not reachable and no cached copy exists" if offline else str(exc)
        raise DataError(f"data.source hub: cannot load {HUB_DATASET}/{task.name}: {why}. "
                        f"Alternatives: {_alternatives()}") from exc
    out = {}
    for split, (hub_split, _) in SPLIT_SOURCES.items():
        name = f"{hub_split}_matched" if task.name == "mnli" and split != "train" else hub_split
        out[split] = hub_examples(task, ds[name])
    return out


def hub_examples(task: TaskSpec, rows) -> list[Example]:
    """Examples from the rows of a hub GLUE split (dicts with the task's text fields and ``label``).

    GLUE's test splits carry label -1: those examples are unlabeled (NaN).
    """
    a_field, b_field = HUB_FIELDS[task.name]
    out = []
    for r in rows:
        label = float(r["label"])
        if label >= 0 and not task.is_regression and label >= task.num_labels:
            raise DataError(f"{HUB_DATASET}/{task.name}: label {r['label']} outside 0..{task.num_labels - 1}")
        out.append(Example(r[a_field], r[b_field] if b_field else None, math.nan if label < 0 else label))
    return out


def load_local(task: TaskSpec, local_dir: Path) -> dict[str, list[Example]]:
    """Train, dev and (optional) test from a folder of GLUE TSVs; every file is validated."""
    local_dir = Path(local_dir)
    if not local_dir.is_dir():
        raise DataError(f"data.local_dir: {local_dir} is not a folder")
    out: dict[str, list[Example]] = {}
    for split, (_, names) in SPLIT_SOURCES.items():
        path = next((local_dir / n for n in names if (local_dir / n).is_file()), None)
        if path is None:
            if split == "test":
                out[split] = []
                continue
            raise DataError(f"data.local_dir: {local_dir} has no {' or '.join(names)}")
        out[split] = glue.read_tsv(path, task, require_labels=split != "test")
    return out


def load_synthetic(cfg: dict, seed: int) -> tuple[dict[str, list[Example]], dict[str, dict[str, int]]]:
    """The synthetic paraphrase splits and the count of each pair kind per split."""
    sizes = {split: int(cfg["synthetic"][f"n_{split}"]) for split in glue.SPLITS}
    pairs = synthetic.generate_splits(sizes, seed)
    examples = {s: [Example(p.text_a, p.text_b, float(p.label)) for p in ps] for s, ps in pairs.items()}
    return examples, {s: synthetic.kind_counts(ps) for s, ps in pairs.items()}


def cap_train(examples: list[Example], limit: int | None, seed: int) -> list[Example]:
    """A seeded random subset of at most ``limit`` examples, in the original order."""
    if limit is None or len(examples) <= limit:
        return examples
    keep = sorted(random.Random(seed).sample(range(len(examples)), limit))
    return [examples[i] for i in keep]


def bow_baseline(task: TaskSpec, train: list[Example], dev: list[Example]) -> dict[str, float]:
    """Bag-of-words linear model (words of each sentence as separate features), fit on train, scored on dev."""
    import scipy.sparse as sp
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression, Ridge

    train = train[:BOW_MAX_TRAIN]
    vec = CountVectorizer(lowercase=True, token_pattern=r"(?u)\b\w+\b")
    vec.fit([f"{e.text_a} {e.text_b or ''}" for e in train])

    def features(examples: list[Example]):
        parts = [vec.transform([e.text_a for e in examples])]
        if task.text_b:
            parts.append(vec.transform([e.text_b or "" for e in examples]))
        return sp.hstack(parts).tocsr()

    y_train = np.array([e.label for e in train])
    y_dev = np.array([e.label for e in dev])
    if task.is_regression:
        preds = Ridge(alpha=1.0).fit(features(train), y_train).predict(features(dev))
        return {"bow_baseline_spearman": glue.compute_metrics(task, preds[:, None], y_dev)["spearman"]}
    if len(np.unique(y_train)) < 2:
        raise DataError("train split has a single label; a classifier cannot be fit")
    model = LogisticRegression(max_iter=2000).fit(features(train), y_train.astype(int))
    return {"bow_baseline_accuracy": float(model.score(features(dev), y_dev.astype(int)))}


def _write_splits(out: Path, task: TaskSpec, splits: dict[str, list[Example]]) -> None:
    for index, split in enumerate(glue.SPLITS):
        examples = splits[split]
        extra = None
        if task.name == "mrpc":  # unique sentence ids, as in the MRPC files
            base = (index + 1) * 1_000_000
            extra = ({"#1 ID": base + 2 * i, "#2 ID": base + 2 * i + 1} for i in range(len(examples)))
        elif "index" in task.columns:
            extra = ({"index": i} for i in range(len(examples)))
        glue.write_split(out / f"{split}.tsv", task, examples, extra)


def build_parser():
    """Command line of the stage."""
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--out-dir", type=Path, required=True, help="folder for the TSVs, task.json and metrics.json")
    return p


def main(argv: list[str] | None = None) -> int:
    """Prepare the data folder; returns the exit status."""
    args = build_parser().parse_args(argv)
    setup_runtime(args.threads, args.seed)
    try:
        cfg = args.params["data"]
        source = cfg["source"]
        task = glue.get_task(cfg["task"])
    except (KeyError, TypeError, DataError) as exc:
        print(f"prepare_data: bad --params: {exc}", file=sys.stderr)
        return 2
    if source == "synthetic" and task.name != "mrpc":
        print("prepare_data: data.source synthetic is an MRPC-format task; set data.task: mrpc", file=sys.stderr)
        return 2
    try:
        prepare(args, cfg, task)
    except DataError as exc:
        print(f"prepare_data: error: {exc}", file=sys.stderr)
        return 1
    return 0


def prepare(args, cfg: dict, task: TaskSpec) -> None:
    """Load the configured source, write the data folder atomically, log metrics and files to MLflow."""
    source = cfg["source"]
    with tracking.stage_run(args.run_dir, "prepare_data", args.params, tags={"source": source, "task": task.name}) as run:
        kinds: dict[str, dict[str, int]] = {}
        if source == "synthetic":
            splits, kinds = load_synthetic(cfg, args.seed)
        elif source == "hub":
            splits = load_hub(task)
        elif source == "local":
            splits = load_local(task, Path(cfg["local_dir"] or ""))
        else:
            raise DataError(f"data.source: unknown source {source!r} (synthetic, hub, local)")
        splits["train"] = cap_train(splits["train"], cfg.get("max_train_examples"), args.seed)
        metrics: dict[str, float] = {f"n_{s}": len(splits[s]) for s in glue.SPLITS}
        if not task.is_regression:
            counts = np.bincount([int(e.label) for e in splits["train"]], minlength=task.num_labels)
            metrics["train_majority_fraction"] = float(counts.max() / counts.sum())
        metrics.update(bow_baseline(task, splits["train"], splits["dev"]))
        info = {"task": task.name, "source": source, "num_labels": task.num_labels,
                "is_regression": task.is_regression, "columns": list(task.columns),
                "sizes": {s: len(splits[s]) for s in glue.SPLITS}, "seed": args.seed}
        if kinds:
            info["synthetic_kinds"] = kinds
        with atomic_dir(args.out_dir) as tmp:
            _write_splits(tmp, task, splits)
            write_json(tmp / glue.TASK_FILE, info)
            write_json(tmp / "metrics.json", metrics)
        run.log_metrics(metrics)
        run.log_artifact(args.out_dir, "data")
        for key, value in metrics.items():
            print(f"prepare_data: {key} = {value:g}")


if __name__ == "__main__":
    sys.exit(main())
