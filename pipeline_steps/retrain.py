"""Stage ``retrain``: fine-tune a pruned model with its masks fixed, optionally distilling from the dense model.

Removed elements get zero gradients and the masks are re-applied after every optimizer step; after
training the model is checked element by element (a revived element fails the stage before anything
is written). Writes ``model/``, ``masks.json`` (the input masks, verified) and ``metrics.json`` with the
dev metrics, ``accuracy_drop`` against the fine-tuned model, sparsities and encoder FLOPs per token.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from . import modeling
from .distillation import distillation_loss, hidden_states_on
from .masking import MaskEnforcer, element_masks, mask_violations
from .stage import base_parser, read_json, setup_runtime
from .sweep_stage import add_sweep_args, branch_name, evaluate, load_data, run_main, section, sparsity_metrics, \
    write_outputs
from .tiles import ModelMasks

RETRAIN_KEYS = ("epochs", "batch_size", "learning_rate", "warmup_ratio", "weight_decay", "distill", "device")


def build_parser():
    """Command line of the stage."""
    p = base_parser(__doc__.splitlines()[0])
    add_sweep_args(p)
    p.add_argument("--masks", type=Path, required=True, help="masks.json of the pruned model")
    p.add_argument("--teacher-dir", type=Path, default=None, help="dense fine-tuned model for distillation")
    p.add_argument("--finetune-metrics", type=Path, default=None,
                   help="finetune metrics.json; its accuracy is the reference of accuracy_drop")
    return p


def main(argv: list[str] | None = None) -> int:
    """Retrain one sweep branch; returns the exit status."""
    args = build_parser().parse_args(argv)
    setup_runtime(args.threads, args.seed)
    return run_main("retrain", lambda: retrain(args))


def retrain_masked(model, emasks: dict, data, cfg: dict, extra, device, run, seed: int,
                   hidden_states: bool = False) -> dict:
    """Fine-tune ``model`` with ``emasks`` enforced; raises if any removed element is non-zero afterwards."""
    model.to(device)
    emasks = {k: v.to(device) for k, v in emasks.items()}
    loader = modeling.make_loader(data.train, cfg["batch_size"], shuffle=True, seed=seed)
    with MaskEnforcer(model, emasks) as enforcer, hidden_states_on(model, hidden_states):
        summary = modeling.train(model, loader, epochs=cfg["epochs"], learning_rate=cfg["learning_rate"],
                                 weight_decay=cfg["weight_decay"], warmup_ratio=cfg["warmup_ratio"], device=device,
                                 run=run, desc="retrain", extra_loss=extra, after_step=enforcer.after_step)
    bad = mask_violations(model, emasks)
    if bad:
        raise RuntimeError(f"retraining revived pruned elements: {bad}")
    return summary


def retrain(args) -> None:
    """The stage body: the MLflow run opens once --params are valid, so a data or model error ends it FAILED."""
    from . import tracking  # here, not at import: retrain_masked runs without MLflow installed

    cfg = section(args.params, "retrain", RETRAIN_KEYS)
    max_length = int(section(args.params, "model", ("max_seq_length",))["max_seq_length"])
    distill = cfg["distill"]
    if distill["enabled"] and args.teacher_dir is None:
        raise ValueError("retrain.distill.enabled is true but no --teacher-dir was given")
    tags = {"sparsity": f"{args.sparsity:g}", "distill": str(distill["enabled"]).lower()}
    with tracking.stage_run(args.run_dir, branch_name("retrain", args.sparsity), args.params, tags=tags) as run:
        reference = None
        if args.finetune_metrics is not None:
            reference = read_json(args.finetune_metrics).get("accuracy")
            if reference is None:
                raise ValueError(f"{args.finetune_metrics}: no 'accuracy' to compare against")
        device = modeling.select_device(cfg["device"])
        masks = ModelMasks.load(args.masks)
        data = load_data(args.data_dir, args.model_dir, max_length, None, args.seed)
        model = modeling.load_classifier(args.model_dir)
        emasks = element_masks(model, masks)
        bad = mask_violations(model, emasks)
        if bad:
            raise ValueError(f"{args.model_dir}: weights are non-zero outside {args.masks}: {bad}")
        extra = None
        if distill["enabled"]:
            teacher = modeling.load_classifier(args.teacher_dir).to(device)
            extra = distillation_loss(teacher, float(distill["alpha"]), float(distill["temperature"]),
                                      data.task.is_regression, float(distill["hidden_weight"]))
        started = time.monotonic()
        hidden = bool(distill["enabled"] and distill["hidden_weight"] > 0)
        summary = retrain_masked(model, emasks, data, cfg, extra, device, run, args.seed, hidden)
        metrics = evaluate(model, data, cfg["batch_size"], device, desc="dev (retrained)")
        if reference is not None and "accuracy" in metrics:
            metrics["accuracy_drop"] = float(reference) - metrics["accuracy"]
            metrics["finetune_accuracy"] = float(reference)
        metrics.update(sparsity_metrics(model, masks, emasks, max_length, args.sparsity))
        metrics.update({"mask_violations": 0.0, "train_seconds": summary["train_seconds"],
                        "train_steps": float(summary["steps"]), "stage_seconds": time.monotonic() - started})
        write_outputs(args.out_dir, model.cpu(), data.tokenizer, masks, metrics, run)
    for key, value in sorted(metrics.items()):
        print(f"retrain: {key} = {value:g}")


if __name__ == "__main__":
    sys.exit(main())
