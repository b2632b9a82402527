"""A stand-in stage for the concurrency tests: opens a child run with ``tracking.stage_run`` and logs
``--steps`` steps of ``--metrics`` metrics each, one store write per step. It creates ``--ready`` once its
run is open and starts logging when ``--go`` appears, so that every process hits the SQLite store at once.

    python tests/reliability_logger.py --run-dir DIR --stage NAME --steps 100 --metrics 4 --ready R --go G
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from pipeline_steps import tracking


def main() -> int:
    """Log the requested metrics and exit 0, or raise (exit 1) on any store failure."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--stage", required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--metrics", type=int, required=True)
    p.add_argument("--ready", type=Path, required=True)
    p.add_argument("--go", type=Path, required=True)
    args = p.parse_args()
    with tracking.stage_run(args.run_dir, args.stage, {"steps": args.steps}, tags={"kind": "reliability"}) as run:
        args.ready.write_text(run.run_id)
        deadline = time.monotonic() + 120
        while not args.go.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        for step in range(args.steps):
            run.log_metrics({f"m{i}": step * 10 + i for i in range(args.metrics)}, step=step)
        run.log_metrics({"final": float(args.steps)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
