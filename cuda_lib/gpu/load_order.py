"""Does a forward's speed depend on when its engine was loaded? (NOTES.md, session 4, run 28.)

perf.py saw the first one or two engines of a process run BERT-base batch 1 x 128 in ~0.44 ms and later loads of
the same model in ~0.47 ms. This script separates the explanations: engine A stays loaded and is timed again after
each later engine B_k (loaded, timed, closed). If A slows down with the B's, the cause is the process or GPU state
(clocks, memory pressure); if A keeps its time while the B's are slower, it is per engine (where its weights landed,
the cuBLASLt algorithms its load chose). The same again with cuBLASLt's heuristic choice (ET_GEMM_TUNE=1, no timing
at load), so tuning can be told apart from placement. Prints one line per measurement and writes --json.

    python cuda_lib/gpu/load_order.py --lib BUILD/libet.so --work /tmp/et-order --json OUT/load_order.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from pipeline_steps import bench, random_bert  # noqa: E402
from pipeline_steps.engine import Engine  # noqa: E402


def b1_ms(eng: Engine, rng: np.random.Generator, warmup: int, iters: int) -> float:
    """Median ms of a graph-replayed batch-1 x 128 forward."""
    lengths = np.full(1, 128, np.int32)
    tokens, segments = bench.random_batch(rng, lengths, eng.info["vocab"])
    return float(np.median(eng.benchmark(tokens, lengths, segments, warmup=warmup, iters=iters)))


def sequence(lib: Path, manifest: Path, later: int, rng: np.random.Generator, warmup: int, iters: int) -> list[dict]:
    """Engine A timed, then per later engine B_k: B_k timed, A timed again, B_k closed."""
    rows = []
    t0 = time.time()

    def log(what: str, ms: float) -> None:
        rows.append({"what": what, "ms": ms, "t_s": time.time() - t0})
        print(f"{rows[-1]['t_s']:6.1f} s  {what:28s} {ms:.4f} ms", flush=True)

    with Engine(lib, manifest, backend="cuda") as a:
        log("A (first load)", b1_ms(a, rng, warmup, iters))
        for k in range(1, later + 1):
            with Engine(lib, manifest, backend="cuda") as b:
                log(f"B{k} (load {k + 1})", b1_ms(b, rng, warmup, iters))
                log(f"A after B{k}", b1_ms(a, rng, warmup, iters))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lib", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--later", type=int, default=4, help="engines loaded after A")
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    args = ap.parse_args()
    model = random_bert.make_model("bert-base", seed=11)
    manifest = random_bert.export(model, random_bert.random_pruning(model, 1.0), args.work / "dense", dtype="float16")
    rng = np.random.default_rng(3)
    results = {}
    for name, tune in (("tuned", None), ("heuristic", "1")):
        print(f"--- cuBLASLt {name}", flush=True)
        if tune is not None:
            os.environ["ET_GEMM_TUNE"] = tune
        results[name] = sequence(args.lib, manifest, args.later, rng, args.warmup, args.iters)
    args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
