"""Print the key fields of a pipeline run's summary.json (what a GPU run is checked for) and the GPU
parity verdict of each infer branch: backend cuda on a named GPU, prediction agreement with the PyTorch
model >= 99.5%, accuracy within 0.2 points of PyTorch's.

    python cuda_lib/gpu/pipeline_summary.py results/minilm-gpu
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

MIN_AGREEMENT = 0.995
MAX_ACCURACY_POINTS = 0.2


def parity(infer: dict) -> tuple[bool, str]:
    """Whether one infer branch meets the GPU parity bar, and a one-line account of it."""
    agree = float(infer.get("prediction_agreement", 0.0))
    points = 100.0 * abs(float(infer.get("accuracy", float("nan"))) - float(infer.get("torch_accuracy", float("nan"))))
    ok = infer.get("backend") == "cuda" and agree >= MIN_AGREEMENT and points <= MAX_ACCURACY_POINTS
    return ok, (f"backend={infer.get('backend')} device={infer.get('device')!r} agreement={agree:.4f} "
                f"accuracy={infer.get('accuracy', float('nan')):.4f} torch={infer.get('torch_accuracy', float('nan')):.4f} "
                f"(|diff| {points:.2f} points) max_abs_logit_diff={infer.get('max_abs_logit_diff', float('nan')):.3g} "
                f"latency_ms={infer.get('latency_ms', float('nan')):.3f}")


def report(run_dir: Path) -> bool:
    """Print the summary of ``run_dir``; True when every infer branch passes the parity bar."""
    path = run_dir / "summary.json"
    if not path.is_file():
        print(f"{run_dir.name}: no summary.json (the DAG did not finish)")
        return False
    s = json.loads(path.read_text())
    ft, lib = s.get("finetune", {}), s.get("build_lib", {})
    print(f"--- {s.get('run_name')}: build_lib backend={lib.get('backend')} ({lib.get('cuda_compiler')}); "
          f"finetune accuracy={ft.get('accuracy', float('nan')):.4f} on {ft.get('device')} "
          f"in {ft.get('train_seconds', float('nan')):.1f} s")
    all_ok = True
    for key, branch in s.get("sweep", {}).items():
        pr, rt = branch.get("prune", {}), branch.get("retrain", {})
        print(f"  s{key}: prune acc_before_retrain={pr.get('accuracy_before_retrain', float('nan')):.4f} "
              f"({pr.get('train_seconds', float('nan')):.1f} s), retrain acc={rt.get('accuracy', float('nan')):.4f} "
              f"drop={rt.get('accuracy_drop', float('nan')):.4f} ({rt.get('train_seconds', float('nan')):.1f} s)")
        if "infer" in branch:
            ok, line = parity(branch["infer"])
            all_ok &= ok
            print(f"  s{key}: infer {'PASS' if ok else 'FAIL'} {line}")
    if "bench" in s:
        print("  bench: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, (int, float)) else f"{k}={v}"
                                      for k, v in sorted(s["bench"].items())))
    return all_ok


def main(argv: list[str] | None = None) -> int:
    """Command line entry point: one or more run folders; exit 1 when a parity check fails."""
    dirs = [Path(a) for a in (argv if argv is not None else sys.argv[1:])]
    if not dirs:
        print(__doc__)
        return 2
    return 0 if all([report(d) for d in dirs]) else 1


if __name__ == "__main__":
    sys.exit(main())
