"""Run the prune and retrain steps on a GPU with bert-base-shaped weights, without MLflow.

Builds a randomly initialised BertForSequenceClassification of bert-base shape (12 layers, hidden 768,
12 heads, FFN 3072, vocab 30522), a word-level tokenizer and a synthetic sentence-pair task as GLUE
TSVs in a temporary folder; then, for each algorithm (re-weighted group lasso, ADMM), runs the very
functions the ``prune`` and ``retrain`` stages run (policy measurement, training toward sparsity, hard
pruning, masked retraining with distillation from the unpruned model), checks the masks (exact zeros
after pruning and after retraining, every kept tile intact, target met within one tile) and prints
the timings. Metrics go to an in-memory recorder instead of MLflow.

    python scripts/gpu_prune_check.py                  # bert-base shape, on the GPU when there is one
    python scripts/gpu_prune_check.py --layers 2 --hidden 256 --heads 4 --intermediate 1024 --n-train 256
Exit status 0 when every check passes.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipeline_steps import glue, modeling  # noqa: E402
from pipeline_steps.distillation import distillation_loss  # noqa: E402
from pipeline_steps.masking import element_masks, mask_violations  # noqa: E402
from pipeline_steps.prune import hard_prune, make_plan, train_toward_sparsity  # noqa: E402
from pipeline_steps.retrain import retrain_masked  # noqa: E402
from pipeline_steps.sweep_stage import evaluate, load_data  # noqa: E402
from pipeline_steps.tile_pruning import layouts_from_model, masks_tile_sparsity, model_prunable_weights  # noqa: E402
from pipeline_steps.tiles import ModelMasks  # noqa: E402

WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
         "quebec romeo sierra tango uniform victor whiskey xray yankee zulu red green blue black white one two "
         "three four five six seven eight nine ten cat dog bird fish tree house car road city river").split()


class MemoryRun:
    """Stands in for tracking.StageRun: keeps the logged metrics in memory."""

    def __init__(self) -> None:
        self.history: dict[str, list[tuple[int, float]]] = {}

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                self.history.setdefault(k, []).append((step or 0, float(v)))

    def log_metric_rows(self, rows) -> None:
        for metrics, step in rows:
            self.log_metrics(metrics, step)


def write_task(root: Path, n_train: int, n_dev: int, seq_words: int, seed: int) -> Path:
    """A sentence-pair task (label: the second sentence is a reordering of the first) as GLUE TSVs."""
    rng = random.Random(seed)
    task = glue.get_task("mrpc")

    def examples(n: int) -> list[glue.Example]:
        out = []
        for _ in range(n):
            a = [rng.choice(WORDS) for _ in range(rng.randint(seq_words // 2, seq_words))]
            positive = rng.random() < 0.5
            b = rng.sample(a, len(a)) if positive else [rng.choice(WORDS) for _ in a]
            out.append(glue.Example(" ".join(a), " ".join(b), 1.0 if positive else 0.0))
        return out

    data = root / "data"
    data.mkdir(parents=True)
    glue.write_split(data / "train.tsv", task, examples(n_train))
    glue.write_split(data / "dev.tsv", task, examples(n_dev))
    (data / glue.TASK_FILE).write_text(json.dumps({"task": "mrpc"}))
    return data


def write_model(root: Path, args) -> Path:
    """A random bert-base-shaped classifier and a word-level WordPiece tokenizer, as an HF folder."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    out = root / "dense"
    out.mkdir(parents=True)
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True)
    torch.manual_seed(args.seed)
    config = BertConfig(vocab_size=30522, hidden_size=args.hidden, num_hidden_layers=args.layers,
                        num_attention_heads=args.heads, intermediate_size=args.intermediate, num_labels=2,
                        max_position_embeddings=512)
    config._attn_implementation = "eager"
    modeling.save_checkpoint(BertForSequenceClassification(config), tokenizer, out)
    return out


def check_masks(model, masks: ModelMasks, emasks: dict, tile: tuple[int, int], target: float) -> dict:
    """The mask checks: no removed element non-zero, non-zero tiles all declared kept, target within one tile."""
    violations = mask_violations(model, emasks)
    from_model = layouts_from_model(model, tile)
    layouts_match = all(np.isin(from_model[n].kept, lay.kept).all() for n, lay in masks.layouts.items())
    n_tiles = sum(lay.n_tiles for lay in masks.layouts.values())
    sparsity = masks_tile_sparsity(masks)
    return {"violations": sum(violations.values()), "layouts_match": layouts_match,
            "tile_sparsity": sparsity, "target_within_one_tile": abs(sparsity - target) <= 1.0 / n_tiles}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_algorithm(algorithm: str, model_dir: Path, data, args, device: torch.device) -> dict:
    """Plan, train toward sparsity, hard-prune, retrain with masks fixed; timings and checks."""
    cfg = {"algorithm": algorithm, "tile": list(args.tile), "kinds": {"qkv": 1.0, "attn_output": 1.0, "ffn": 1.0},
           "head_pruning": True, "structured_share": 0.5, "ramp": 0.75, "policy": "sensitivity",
           "sensitivity": {"examples": args.sensitivity_examples, "power": 0.5, "spread": 0.3}, "epochs": args.prune_epochs,
           "batch_size": args.batch_size, "learning_rate": args.learning_rate, "below_threshold": 0.1,
           "distill": {"enabled": True, "alpha": 0.5, "temperature": 2.0, "hidden_weight": 1.0},
           "reweighted": {"penalty": args.penalty, "update_every": 20, "eps": 1e-3},
           "admm": {"rho": args.rho, "rho_growth": 1.3, "update_every": 20}}
    rcfg = {"epochs": args.retrain_epochs, "batch_size": args.batch_size, "learning_rate": args.learning_rate,
            "warmup_ratio": 0.1, "weight_decay": 0.01}
    run = MemoryRun()
    times: dict[str, float] = {}
    model = modeling.load_classifier(model_dir).to(device)
    weights = model_prunable_weights(model)

    def timed(name, fn):
        synchronize(device)
        t = time.perf_counter()
        result = fn()
        synchronize(device)
        times[name] = time.perf_counter() - t
        return result

    plan = timed("plan_s", lambda: make_plan(model, weights, data, cfg, args.sparsity, args.seed, device, run))
    summary = timed("prune_train_s", lambda: train_toward_sparsity(model, weights, plan, data, cfg, args.seed,
                                                                   device, run))
    masks, emasks = timed("hard_prune_s", lambda: hard_prune(model, weights, plan))
    pruned = timed("eval_s", lambda: evaluate(model, data, args.batch_size, device, desc="dev (pruned)"))
    after_prune = check_masks(model, masks, emasks, tuple(args.tile), args.sparsity)
    teacher = modeling.load_classifier(model_dir).to(device)
    extra = distillation_loss(teacher, 0.5, 2.0, regression=False, hidden_weight=1.0)
    rsummary = timed("retrain_s", lambda: retrain_masked(model, element_masks(model, masks), data, rcfg, extra,
                                                         device, run, args.seed, hidden_states=True))
    retrained = evaluate(model, data, args.batch_size, device, desc="dev (retrained)")
    after_retrain = check_masks(model, masks, emasks, tuple(args.tile), args.sparsity)
    below = run.history.get("prune.frac_tiles_below_threshold", [(0, float("nan"))])
    return {
        "algorithm": algorithm, "device": str(device), "times": times,
        "prune_steps": summary["steps"], "retrain_steps": rsummary["steps"],
        "prune_steps_per_s": summary["steps"] / times["prune_train_s"],
        "retrain_steps_per_s": rsummary["steps"] / times["retrain_s"],
        "heads_pruned": sum(len(v) for v in masks.pruned_heads.values()),
        "accuracy_before_retrain": pruned.get("accuracy"), "accuracy_after_retrain": retrained.get("accuracy"),
        "frac_tiles_below_threshold_first_last": [below[0][1], below[-1][1]],
        "checks_after_prune": after_prune, "checks_after_retrain": after_retrain,
    }


def passed(result: dict) -> bool:
    return all(c["violations"] == 0 and c["layouts_match"] and c["target_within_one_tile"]
               for c in (result["checks_after_prune"], result["checks_after_retrain"]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--intermediate", type=int, default=3072)
    p.add_argument("--n-train", type=int, default=2048)
    p.add_argument("--n-dev", type=int, default=512)
    p.add_argument("--seq-words", type=int, default=50, help="words per sentence (at most; pairs ~ 2x tokens)")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--sparsity", type=float, default=0.8)
    p.add_argument("--tile", type=int, nargs=2, default=[16, 16])
    p.add_argument("--prune-epochs", type=int, default=1)
    p.add_argument("--retrain-epochs", type=int, default=1)
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument("--penalty", type=float, default=1e-2)
    p.add_argument("--rho", type=float, default=2e-2)
    p.add_argument("--sensitivity-examples", type=int, default=256)
    p.add_argument("--algorithms", nargs="+", default=["reweighted", "admm"], choices=["reweighted", "admm"])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    device = modeling.select_device(args.device)
    torch.manual_seed(args.seed)
    print(f"device: {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    results = []
    with tempfile.TemporaryDirectory(prefix="gpu_prune_check_") as tmp:
        root = Path(tmp)
        data_dir = write_task(root, args.n_train, args.n_dev, args.seq_words, args.seed)
        model_dir = write_model(root, args)
        data = load_data(data_dir, model_dir, args.max_length, None, args.seed)
        print(f"model: {args.layers} layers, hidden {args.hidden}, {args.heads} heads, FFN {args.intermediate}; "
              f"train {len(data.train)} pairs, mean {data.train.lengths.mean():.1f} tokens")
        for algorithm in args.algorithms:
            result = run_algorithm(algorithm, model_dir, data, args, device)
            if device.type == "cuda":
                result["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
            result["passed"] = passed(result)
            results.append(result)
            print(json.dumps(result, indent=2))
    print(f"{'algorithm':<11} {'plan s':>7} {'prune s':>8} {'steps/s':>8} {'retrain s':>9} {'steps/s':>8} "
          f"{'tile sp.':>8} {'heads':>5} checks")
    for r in results:
        t = r["times"]
        print(f"{r['algorithm']:<11} {t['plan_s']:7.1f} {t['prune_train_s']:8.1f} {r['prune_steps_per_s']:8.2f} "
              f"{t['retrain_s']:9.1f} {r['retrain_steps_per_s']:8.2f} "
              f"{r['checks_after_retrain']['tile_sparsity']:8.4f} {r['heads_pruned']:5d} "
              f"{'PASS' if r['passed'] else 'FAIL'}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if all(r["passed"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
