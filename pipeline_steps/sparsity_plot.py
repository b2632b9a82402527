"""The accuracy-vs-sparsity plot of a pruning sweep (drawn by the report stage)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_accuracy_vs_sparsity(rows: list[dict], dense_accuracy: float, out_png: Path) -> None:
    """Draw retrained (and, where present, before-retrain) accuracy against sparsity; dense as a line.

    Each row needs ``sparsity`` and ``accuracy``; ``accuracy_before_retrain`` and ``tile_sparsity``
    are drawn when present.
    """
    if not rows:
        raise ValueError("plot_accuracy_vs_sparsity: no rows")
    for i, r in enumerate(rows):
        missing = [k for k in ("sparsity", "accuracy") if k not in r]
        if missing:
            raise ValueError(f"plot_accuracy_vs_sparsity: row {i} lacks {', '.join(missing)}")
    rows = sorted(rows, key=lambda r: float(r["sparsity"]))
    xs = [float(r.get("tile_sparsity", r["sparsity"])) for r in rows]
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    ax.axhline(dense_accuracy, color="0.4", linestyle="--", label=f"dense fine-tuned ({dense_accuracy:.3f})")
    ax.plot(xs, [float(r["accuracy"]) for r in rows], "o-", label="after masked retraining")
    before = [(x, float(r["accuracy_before_retrain"])) for x, r in zip(xs, rows) if "accuracy_before_retrain" in r]
    if before:
        ax.plot(*zip(*before), "s:", label="after hard pruning")
    ax.set_xlabel("tile sparsity of encoder linear weights")
    ax.set_ylabel("dev accuracy")
    ax.set_xlim(0.0, 1.0)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png)
    plt.close(fig)
