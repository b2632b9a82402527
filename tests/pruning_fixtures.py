"""Small random BERT models and helpers shared by the pruning tests."""

from __future__ import annotations

import torch
from transformers import BertConfig, BertForSequenceClassification


def tiny_bert(seed: int = 0, hidden: int = 64, heads: int = 4, layers: int = 2, intermediate: int = 128,
              vocab: int = 120, num_labels: int = 2) -> BertForSequenceClassification:
    """A randomly initialised eager-attention BERT classifier, small enough for millisecond passes."""
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=intermediate, max_position_embeddings=64, num_labels=num_labels)
    cfg._attn_implementation = "eager"
    model = BertForSequenceClassification(cfg)
    with torch.no_grad():  # non-trivial biases so that bias masking is observable
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.05)
    return model


def random_batches(n_batches: int = 2, batch: int = 4, seq: int = 12, vocab: int = 120, seed: int = 1,
                   num_labels: int = 2) -> list[dict[str, torch.Tensor]]:
    """Batches in the ``modeling.make_loader`` format with ragged attention masks."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        ids = torch.randint(1, vocab, (batch, seq), generator=gen)
        lengths = torch.randint(3, seq + 1, (batch,), generator=gen)
        mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()
        out.append({"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids),
                    "labels": torch.randint(0, num_labels, (batch,), generator=gen)})
    return out


def stage_inputs(root, n_train: int = 48, n_dev: int = 24):
    """A tiny fine-tuned-model folder (hidden 64, 4 heads of 16, MiniLM tokenizer), a small MRPC-format
    data folder and a finetune metrics.json under ``root``; returns ``(model_dir, data_dir, metrics_path)``."""
    import json
    import random
    from pathlib import Path

    from pipeline_steps import glue, modeling

    root = Path(root)
    tokenizer = modeling.load_tokenizer(modeling.EMBEDDED_MODEL)
    model = tiny_bert(vocab=tokenizer.vocab_size)
    model_dir = root / "finetune" / "model"
    modeling.save_checkpoint(model, tokenizer, model_dir)
    data_dir = root / "data"
    data_dir.mkdir(parents=True)
    task = glue.get_task("mrpc")
    rng = random.Random(0)
    words = "the cat dog sat ran on a mat big small red blue house car tree old new".split()

    def examples(n):
        out = []
        for _ in range(n):
            a = " ".join(rng.choice(words) for _ in range(6))
            same = rng.random() < 0.5
            b = a if same else " ".join(rng.choice(words) for _ in range(6))
            out.append(glue.Example(a, b, 1.0 if same else 0.0))
        return out

    glue.write_split(data_dir / "train.tsv", task, examples(n_train))
    glue.write_split(data_dir / "dev.tsv", task, examples(n_dev))
    (data_dir / glue.TASK_FILE).write_text(json.dumps({"task": "mrpc"}))
    metrics = root / "finetune" / "metrics.json"
    metrics.write_text(json.dumps({"accuracy": 0.75, "f1": 0.7}))
    return model_dir, data_dir, metrics


def stage_params(algorithm: str = "reweighted", policy: str = "sensitivity", head_pruning: bool = True) -> dict:
    """``--params`` of the prune and retrain stages for the tiny inputs."""
    return {
        "seed": 13,
        "model": {"name_or_path": "unused", "max_seq_length": 32},
        "prune": {"sweep": [0.5], "algorithm": algorithm, "tile": [16, 16],
                  "kinds": {"qkv": 1.0, "attn_output": 1.0, "ffn": 1.0}, "head_pruning": head_pruning,
                  "structured_share": 0.5, "ramp": 0.75, "policy": policy, "sensitivity": {"examples": 8, "power": 0.5, "spread": 0.3},
                  "epochs": 1, "batch_size": 8, "learning_rate": 1e-3, "max_train_examples": 32,
                  "below_threshold": 0.1, "device": "cpu",
                  "distill": {"enabled": True, "alpha": 0.5, "temperature": 2.0, "hidden_weight": 1.0},
                  "reweighted": {"penalty": 1.0, "update_every": 2, "eps": 1e-3},
                  "admm": {"rho": 1e-2, "rho_growth": 1.5, "update_every": 2}},
        "retrain": {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3, "warmup_ratio": 0.1, "weight_decay": 0.01,
                    "device": "cpu", "distill": {"enabled": True, "alpha": 0.5, "temperature": 2.0, "hidden_weight": 1.0}},
    }
