"""Per-kernel summary of ``ncu --csv --page raw`` files written by run_all.sh's ``ncu`` step.

Groups launches by kernel name and prints, per forward pass (the number of forwards is the number
of pooler_classifier launches), the time of each kernel family, its share, and its time-weighted
SM / DRAM / tensor-pipe utilisation (percent of peak).

    python cuda_lib/gpu/ncu_summary.py OUT/ncu_dense.csv [OUT/ncu_s80.csv ...]
"""

from __future__ import annotations

import csv
import re
import sys
from collections import defaultdict
from pathlib import Path

TIME = "gpu__time_duration.sum"
UTIL = {"sm%": "sm__throughput.avg.pct_of_peak_sustained_elapsed",
        "dram%": "dram__throughput.avg.pct_of_peak_sustained_elapsed",
        "tensor%": "sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active"}
UNIT_NS = {"nsecond": 1.0, "usecond": 1e3, "msecond": 1e6, "second": 1e9}


def family(name: str) -> str:
    """A short kernel family name (template arguments and parameters dropped)."""
    base = re.split(r"[<(]", name, maxsplit=1)[0].strip()
    return base.split("::")[-1].replace("void ", "") or name[:40]


def summarize(path: Path) -> None:
    rows = list(csv.reader(path.read_text(errors="replace").splitlines()))
    start = next((i for i, r in enumerate(rows) if "Kernel Name" in r), None)
    if start is None:
        print(f"{path}: no ncu table (first lines: {rows[:3]})")
        return
    header, units = rows[start], rows[start + 1]
    col = {h: i for i, h in enumerate(header)}
    scale = UNIT_NS.get(units[col[TIME]], 1.0)
    total: dict[str, float] = defaultdict(float)
    util: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    count: dict[str, int] = defaultdict(int)
    for r in rows[start + 2:]:
        if len(r) != len(header):
            continue
        fam = family(r[col["Kernel Name"]])
        t = float(r[col[TIME]].replace(",", "")) * scale
        total[fam] += t
        count[fam] += 1
        for k, metric in UTIL.items():
            if metric in col and r[col[metric]] not in ("", "n/a"):
                util[fam][k] += t * float(r[col[metric]].replace(",", ""))
    forwards = max(count.get("pooler_classifier_kernel", 1), 1)
    grand = sum(total.values())
    print(f"\n{path.name}: {grand / forwards / 1e3:.1f} us of kernel time per forward ({forwards} forwards profiled)")
    print(f"{'kernel':36s} {'us/fwd':>9s} {'share':>6s} {'launch':>6s} " + " ".join(f"{k:>8s}" for k in UTIL))
    for fam, t in sorted(total.items(), key=lambda kv: -kv[1]):
        u = " ".join(f"{util[fam][k] / t:8.1f}" if t else f"{'-':>8s}" for k in UTIL)
        print(f"{fam[:36]:36s} {t / forwards / 1e3:9.1f} {100 * t / grand:5.1f}% {count[fam] // forwards:6d} {u}")


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        summarize(Path(arg))
