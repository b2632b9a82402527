"""Stage ``prune``: train the fine-tuned model toward attention-aware tensor-tile sparsity, then hard-prune.

1. Policy: per-(layer, kind) target ratios from ``prune.policy`` (``sensitivity``: measured on a dev
   subset — the loss increase when each layer alone is tile-pruned, and per-head gradient importance;
   ``uniform``: one ratio, heads ranked by weight energy), scaled by ``prune.kinds``, averaging to the
   sweep sparsity over all encoder linear weights.
2. Training toward the sparse set: re-weighted group lasso over tiles and heads (``reweighted``) or
   ADMM with Z projected onto the plan's tile-sparse set (``admm``); the set tightens along a cubic
   ramp over the first ``prune.ramp`` of the steps (gradual pruning); per-step loss, penalty and the
   fraction of tiles below threshold go to MLflow. Optionally the dense input model is a teacher
   (logits and hidden states), so the representations survive while tiles are removed.
3. Hard pruning to the plan (heads, Q/K and V/O dimension blocks, then tiles) and dev evaluation.

Writes ``model/`` (pruned weights are exact zeros), ``masks.json`` and ``metrics.json``.
"""

from __future__ import annotations

import copy
import sys
import time

import numpy as np

from . import modeling
from .admm import ADMM
from .distillation import distillation_loss, hidden_states_on
from .head_pruning import attention_layers, head_weight_scores
from .mask_selection import SparsityPlan, cubic_ramp, select_masks
from .masking import apply_masks, element_masks, element_masks_np, mask_violations, weight_arrays
from .reweighted import ReweightedGroupLasso
from .sensitivity import MAX_POOL_SPARSITY, allocate, head_importance, layer_sensitivity, layer_weights, \
    sensitivity_cap
from .stage import base_parser, setup_runtime
from .sweep_stage import add_sweep_args, branch_name, evaluate, load_data, run_main, section, sparsity_metrics, \
    write_outputs
from .tile_pruning import check_tile, model_prunable_weights
from .tiles import ModelMasks

PRUNE_KEYS = ("algorithm", "tile", "kinds", "head_pruning", "policy", "structured_share", "ramp", "epochs", "batch_size",
              "learning_rate", "max_train_examples", "below_threshold", "sensitivity", "distill", "reweighted", "admm",
              "device")


def build_parser():
    """Command line of the stage."""
    p = base_parser(__doc__.splitlines()[0])
    add_sweep_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """Prune one sweep branch; returns the exit status."""
    args = build_parser().parse_args(argv)
    setup_runtime(args.threads, args.seed)
    return run_main("prune", lambda: prune(args))


def make_plan(model, weights, data, cfg: dict, target: float, seed: int, device, run) -> SparsityPlan:
    """The sparsity plan of ``prune.policy`` (measured on a dev subset for ``sensitivity``)."""
    tile = tuple(cfg["tile"])
    num_heads = model.config.num_attention_heads
    atts = attention_layers(weights, num_heads)
    layer_weight = None
    head_scores = None
    max_ratio = MAX_POOL_SPARSITY
    if cfg["policy"] == "sensitivity":
        n = min(int(cfg["sensitivity"]["examples"]), len(data.dev))
        subset = modeling.EncodedSplit(data.dev.input_ids[:n], data.dev.token_type_ids[:n], data.dev.labels[:n],
                                       data.dev.regression)
        batches = list(modeling.make_loader(subset, cfg["batch_size"], shuffle=False))
        sens = layer_sensitivity(model, batches, target, tile, device, seed)
        layer_weight = layer_weights(sens, float(cfg["sensitivity"]["power"]))
        max_ratio = sensitivity_cap(target, float(cfg["sensitivity"]["spread"]))
        run.log_metrics({f"sensitivity.layer{l}": v for l, v in sens.items()})
        if cfg["head_pruning"]:
            head_scores = head_importance(model, batches, device)
    elif cfg["policy"] == "uniform":
        if cfg["head_pruning"]:
            head_scores = head_weight_scores(atts, weight_arrays(model, weights))
    else:
        raise ValueError(f"prune.policy: unknown policy {cfg['policy']!r} (sensitivity, uniform)")
    pool = allocate(weights, target, dict(cfg["kinds"]), layer_weight, max_ratio)
    run.log_metrics({f"plan.layer{l}.{k}": s for (l, k), s in pool.items()})
    return SparsityPlan(target, pool, tile, seed, head_scores, float(cfg["structured_share"]))


def train_toward_sparsity(model, weights, plan: SparsityPlan, data, cfg: dict, seed: int, device, run) -> dict:
    """Re-weighted group lasso or ADMM training over the (optionally capped) train split."""
    num_heads = model.config.num_attention_heads
    loader = modeling.make_loader(data.train, cfg["batch_size"], shuffle=True, seed=seed)
    distill = cfg["distill"]
    extra = None
    if distill["enabled"]:  # the dense model as it enters pruning is the teacher
        teacher = copy.deepcopy(model).to(device)
        extra = distillation_loss(teacher, float(distill["alpha"]), float(distill["temperature"]),
                                  data.task.is_regression, float(distill["hidden_weight"]))
    common = dict(epochs=cfg["epochs"], learning_rate=cfg["learning_rate"], weight_decay=0.0, warmup_ratio=0.0,
                  device=device, run=run, desc=f"prune[{cfg['algorithm']}]", extra_loss=extra)
    model.to(device)
    ramp_steps = int(round(float(cfg["ramp"]) * cfg["epochs"] * len(loader)))

    def select(arrays: dict[str, np.ndarray], step: int) -> ModelMasks:
        """The plan toward the cubic-ramp target of ``step``: the sparse set tightens gradually."""
        return select_masks(arrays, weights, num_heads, plan.scaled(cubic_ramp(plan.target, step, ramp_steps)))

    if cfg["algorithm"] == "reweighted":
        rw = cfg["reweighted"]
        heads = attention_layers(weights, num_heads) if plan.head_scores is not None else None
        algo = ReweightedGroupLasso(model, weights, plan.tile, penalty=rw["penalty"], eps=rw["eps"],
                                    update_every=rw["update_every"], select=select, heads=heads,
                                    below_ratio=cfg["below_threshold"])
        with hidden_states_on(model, bool(extra and distill["hidden_weight"] > 0)):
            return modeling.train(model, loader, after_step=algo.after_step, **common)
    if cfg["algorithm"] == "admm":
        ad = cfg["admm"]

        def support(arrays: dict[str, np.ndarray], step: int) -> dict[str, np.ndarray]:
            return element_masks_np(weights, num_heads, select(arrays, step))

        algo = ADMM(model, weights, support, plan.tile, rho=ad["rho"], rho_growth=ad["rho_growth"],
                    update_every=ad["update_every"], below_ratio=cfg["below_threshold"])
        with hidden_states_on(model, bool(extra and distill["hidden_weight"] > 0)):
            return modeling.train(model, loader, after_step=algo.after_step, **common)
    raise ValueError(f"prune.algorithm: unknown algorithm {cfg['algorithm']!r} (reweighted, admm)")


def hard_prune(model, weights, plan: SparsityPlan) -> tuple[ModelMasks, dict]:
    """Select the plan's masks from the current weights, zero everything removed, and check it."""
    masks = select_masks(weight_arrays(model, weights), weights, model.config.num_attention_heads, plan)
    emasks = element_masks(model, masks)
    apply_masks(model, emasks)
    bad = mask_violations(model, emasks)
    if bad:
        raise RuntimeError(f"hard pruning left non-zero elements outside the masks: {bad}")
    return masks, emasks


def prune(args) -> None:
    """The stage body: the MLflow run opens once --params are valid, so a data or model error ends it FAILED."""
    from . import tracking  # here, not at import: the training steps above run without MLflow installed

    cfg = section(args.params, "prune", PRUNE_KEYS)
    max_length = int(section(args.params, "model", ("max_seq_length",))["max_seq_length"])
    target = float(args.sparsity)
    if not 0.0 <= target < 1.0:
        raise ValueError(f"--sparsity {target}: must be in [0, 1)")
    tags = {"sparsity": f"{target:g}", "algorithm": cfg["algorithm"], "policy": cfg["policy"]}
    with tracking.stage_run(args.run_dir, branch_name("prune", target), args.params, tags=tags) as run:
        device = modeling.select_device(cfg["device"])
        data = load_data(args.data_dir, args.model_dir, max_length, cfg["max_train_examples"], args.seed)
        model = modeling.load_classifier(args.model_dir)
        weights = model_prunable_weights(model)
        for w in weights:  # prune.tile must divide every weight (hidden and intermediate sizes) before any work
            check_tile(w.shape, tuple(cfg["tile"]), w.name)
        started = time.monotonic()
        plan = make_plan(model, weights, data, cfg, target, args.seed, device, run)
        plan_seconds = time.monotonic() - started
        summary = train_toward_sparsity(model, weights, plan, data, cfg, args.seed, device, run)
        masks, emasks = hard_prune(model, weights, plan)
        dev = evaluate(model, data, cfg["batch_size"], device, desc="dev (pruned)")
        metrics = {f"{k}_before_retrain": v for k, v in dev.items()}
        metrics.update(sparsity_metrics(model, masks, emasks, max_length, target))
        metrics.update({"plan_seconds": plan_seconds, "train_seconds": summary["train_seconds"],
                        "train_steps": float(summary["steps"]), "stage_seconds": time.monotonic() - started})
        write_outputs(args.out_dir, model.cpu(), data.tokenizer, masks, metrics, run)
    for key, value in sorted(metrics.items()):
        print(f"prune: {key} = {value:g}")


if __name__ == "__main__":
    sys.exit(main())
