"""A stand-in stage for the kill tests: opens a child run with ``tracking.stage_run``, logs one metric,
creates ``--ready`` and then either sleeps (to be killed) or raises (``--fail``).

    python tests/reliability_sleeper.py --run-dir DIR --stage NAME --ready FILE [--fail]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from pipeline_steps import tracking


def main() -> int:
    """Run until killed, or raise RuntimeError with ``--fail``."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--stage", required=True)
    p.add_argument("--ready", type=Path, required=True)
    p.add_argument("--fail", action="store_true")
    args = p.parse_args()
    with tracking.stage_run(args.run_dir, args.stage, {}) as run:
        run.log_metrics({"progress": 1.0}, step=1)
        args.ready.write_text(run.run_id)
        if args.fail:
            raise RuntimeError("deliberate failure for the test")
        time.sleep(120)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
