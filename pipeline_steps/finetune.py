"""Stage ``finetune``: fine-tune a BERT sequence classifier on the prepared task.

Reads ``<data-dir>/{train,dev}.tsv`` and ``task.json``; trains with AdamW and linear warmup/decay
(per-step loss and learning rate to MLflow), evaluates on dev after every epoch, and writes the
final model (``<out-dir>/model``, safetensors) and ``<out-dir>/metrics.json`` (dev ``accuracy``,
``f1``, the task's GLUE metric as ``glue_metric``, and timings).
"""

from __future__ import annotations

import sys
from pathlib import Path

from . import glue, modeling, tracking
from .glue import DataError
from .stage import METRICS_FILE, atomic_dir, base_parser, setup_runtime, write_json


def evaluate(model, task: glue.TaskSpec, loader, device, desc: str = "dev") -> dict[str, float]:
    """The task's GLUE metrics of ``model`` on ``loader``."""
    logits, labels = modeling.predict(model, loader, device, desc=desc)
    return glue.compute_metrics(task, logits, labels)


def build_parser():
    """Command line of the stage."""
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, required=True, help="prepare_data output folder")
    p.add_argument("--out-dir", type=Path, required=True, help="folder for model/ and metrics.json")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the stage; returns the exit status."""
    args = build_parser().parse_args(argv)
    setup_runtime(args.threads, args.seed)
    try:
        model_cfg, cfg = args.params["model"], args.params["finetune"]
    except (KeyError, TypeError) as exc:
        print(f"finetune: --params needs 'model' and 'finetune' sections: missing {exc}", file=sys.stderr)
        return 2
    try:
        finetune(args, model_cfg, cfg)
    except (DataError, modeling.ModelError) as exc:
        print(f"finetune: error: {exc}", file=sys.stderr)
        return 1
    return 0


def finetune(args, model_cfg: dict, cfg: dict) -> dict:
    """Train, evaluate and save; returns the metrics written to ``metrics.json``."""
    name = model_cfg["name_or_path"]
    with tracking.stage_run(args.run_dir, "finetune", args.params, tags={"model": name}) as run:
        task = glue.read_task(args.data_dir)
        train_ex = glue.read_split(args.data_dir, "train", task)
        dev_ex = glue.read_split(args.data_dir, "dev", task)
        device = modeling.select_device(cfg["device"])
        run.set_tags({"task": task.name, "torch_device": str(device)})
        tokenizer = modeling.load_tokenizer(name)
        model = modeling.load_classifier(name, task.num_labels)
        max_len = int(model_cfg["max_seq_length"])
        train_enc = modeling.encode(tokenizer, train_ex, max_len, regression=task.is_regression)
        dev_enc = modeling.encode(tokenizer, dev_ex, max_len, regression=task.is_regression)
        train_loader = modeling.make_loader(train_enc, cfg["batch_size"], shuffle=True, seed=args.seed)
        dev_loader = modeling.make_loader(dev_enc, 2 * cfg["batch_size"], shuffle=False)
        dev_history: list[dict[str, float]] = []

        def on_epoch_end(epoch: int) -> dict[str, float]:
            dev_history.append(evaluate(model, task, dev_loader, device, desc=f"dev epoch {epoch}"))
            print(f"finetune: epoch {epoch} dev " + " ".join(f"{k}={v:.4f}" for k, v in dev_history[-1].items()))
            return {f"dev.{k}": v for k, v in dev_history[-1].items()}

        summary = modeling.train(
            model, train_loader, epochs=cfg["epochs"], learning_rate=cfg["learning_rate"],
            weight_decay=cfg["weight_decay"], warmup_ratio=cfg["warmup_ratio"], device=device, run=run,
            desc="finetune", on_epoch_end=on_epoch_end,
        )
        metrics: dict[str, float | str] = dict(dev_history[-1])
        metrics.update({
            "glue_metric": dev_history[-1][task.main_metric], "glue_metric_name": task.main_metric,
            "train_seconds": round(summary["train_seconds"], 2), "train_steps": summary["steps"],
            "train_loss": summary["train_loss"], "n_train": len(train_enc), "n_dev": len(dev_enc),
            "n_truncated_train": train_enc.n_truncated, "n_truncated_dev": dev_enc.n_truncated,
            "device": str(device),
        })
        with atomic_dir(args.out_dir) as tmp:
            modeling.save_checkpoint(model, tokenizer, tmp / "model")
            write_json(tmp / METRICS_FILE, metrics)
        run.log_metrics(metrics)
        run.set_tags({"checkpoint_path": str((args.out_dir / "model").resolve())})
        run.log_artifact(args.out_dir / METRICS_FILE)
        print("finetune: " + " ".join(f"{k}={v}" for k, v in metrics.items()))
        return metrics


if __name__ == "__main__":
    sys.exit(main())
