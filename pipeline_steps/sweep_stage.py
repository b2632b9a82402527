"""What the two sweep stages (``prune``, ``retrain``) share: their command line, data, evaluation,
sparsity metrics and outputs (``model/``, ``masks.json``, ``metrics.json``)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from . import glue, modeling
from .flops import model_flops_per_token
from .masking import weight_sparsity
from .stage import METRICS_FILE, atomic_dir, write_json
from .tile_pruning import masks_tile_sparsity
from .tiles import ModelMasks

MASKS_FILE = "masks.json"


def add_sweep_args(p: argparse.ArgumentParser) -> None:
    """Options common to the sweep stages."""
    p.add_argument("--sparsity", type=float, required=True, help="target tile sparsity of this sweep branch")
    p.add_argument("--model-dir", type=Path, required=True, help="input model folder (HF checkpoint)")
    p.add_argument("--data-dir", type=Path, required=True, help="prepare_data output folder")
    p.add_argument("--out-dir", type=Path, required=True, help="folder for model/, masks.json, metrics.json")


def section(params: dict, stage: str, keys: tuple[str, ...]) -> dict:
    """``params[stage]`` with ``keys`` present; a clear error naming the missing key otherwise."""
    cfg = params.get(stage)
    if not isinstance(cfg, dict):
        raise ValueError(f"--params: no {stage!r} section")
    missing = [k for k in keys if k not in cfg]
    if missing:
        raise ValueError(f"--params: {stage}.{missing[0]} is missing")
    return cfg


@dataclass
class TaskData:
    """The task, its tokenizer and the encoded train/dev splits of one stage."""

    task: glue.TaskSpec
    tokenizer: Any
    train: modeling.EncodedSplit
    dev: modeling.EncodedSplit
    max_length: int


def load_data(data_dir: Path, model_dir: Path, max_length: int, max_train: int | None, seed: int) -> TaskData:
    """Read and encode train (optionally a seeded subset of ``max_train`` examples) and dev."""
    task = glue.read_task(data_dir)
    train = glue.read_split(data_dir, "train", task)
    dev = glue.read_split(data_dir, "dev", task)
    if max_train is not None and max_train < len(train):
        idx = np.random.default_rng(seed).permutation(len(train))[:max_train]
        train = [train[i] for i in sorted(idx)]
    tokenizer = modeling.load_tokenizer(model_dir)
    reg = task.is_regression
    return TaskData(task, tokenizer, modeling.encode(tokenizer, train, max_length, regression=reg),
                    modeling.encode(tokenizer, dev, max_length, regression=reg), max_length)


def evaluate(model: torch.nn.Module, data: TaskData, batch_size: int, device: torch.device,
             desc: str = "dev") -> dict[str, float]:
    """Dev metrics of the task (accuracy/F1/…)."""
    loader = modeling.make_loader(data.dev, batch_size, shuffle=False)
    logits, labels = modeling.predict(model, loader, device, desc=desc)
    return glue.compute_metrics(data.task, logits, labels)


def sparsity_metrics(model: torch.nn.Module, masks: ModelMasks, emasks: dict[str, torch.Tensor],
                     seq_len: int, target: float) -> dict[str, float]:
    """Tile/weight sparsity, pruned heads and encoder FLOPs per token (at ``seq_len``) of a masked model."""
    return {
        "sparsity": float(target),
        "tile_sparsity": masks_tile_sparsity(masks),
        "weight_sparsity": weight_sparsity(model),
        "heads_pruned": float(sum(len(v) for v in masks.pruned_heads.values())),
        "encoder_flops_per_token": model_flops_per_token(model, emasks, seq_len),
        "dense_encoder_flops_per_token": model_flops_per_token(model, {}, seq_len),
        "flops_seq_len": float(seq_len),
    }


def write_outputs(out_dir: Path, model: torch.nn.Module, tokenizer: Any, masks: ModelMasks,
                  metrics: dict[str, float], run) -> None:
    """Write ``model/``, ``masks.json``, ``metrics.json`` atomically; log metrics, masks and the checkpoint path."""
    with atomic_dir(out_dir) as tmp:
        modeling.save_checkpoint(model, tokenizer, tmp / "model")
        masks.save(tmp / MASKS_FILE)
        write_json(tmp / METRICS_FILE, metrics)
    run.log_metrics(metrics)
    run.log_artifact(out_dir / MASKS_FILE)
    run.log_artifact(out_dir / METRICS_FILE)
    run.set_tags({"checkpoint_path": str((out_dir / "model").resolve())})


def run_main(name: str, body: Callable[[], None]) -> int:
    """Run a stage body; input/config problems print one clear line and exit 1."""
    try:
        body()
    except (ValueError, glue.DataError, modeling.ModelError, FileNotFoundError) as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 1
    return 0


def branch_name(stage: str, sparsity: float) -> str:
    """MLflow run name of one sweep branch, e.g. ``prune[s0.5]``."""
    return f"{stage}[s{sparsity:g}]"
