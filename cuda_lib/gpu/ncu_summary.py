"""Per-kernel summary of one forward in ``ncu --csv --page raw`` files written by run_all.sh's ``ncu`` step.

The engine's first call tunes cuBLASLt (timed candidate launches) and runs eagerly before it captures its CUDA
graph, so a profile holds more than forwards. This keeps only the launches of the *last* forward — those after
the second-to-last classifier launch (the last kernel of a forward) up to the last one — and prints, per kernel
family, its time, share, launches and time-weighted SM / DRAM / tensor-pipe utilisation (percent of peak), then
the forward's kernel count and summed kernel time (compare with the forward's graph-replayed latency: the
difference is the time between kernels).

    python cuda_lib/gpu/ncu_summary.py OUT/ncu_dense_b1.csv [more.csv ...]
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
LAST_KERNEL = "classifier_kernel"


def family(name: str) -> str:
    """A short kernel family name: namespaces, template arguments and parameters dropped."""
    name = name.replace("(anonymous namespace)", "anon").replace("<unnamed>", "anon")
    base = re.split(r"[<(]", name, maxsplit=1)[0].strip()
    return base.split("::")[-1].replace("void ", "") or name[:40]


def last_forward(launches: list[tuple[str, float, dict[str, float]]]) -> list[tuple[str, float, dict[str, float]]]:
    """The launches of the last forward: after the second-to-last classifier launch, through the last."""
    ends = [i for i, (fam, _, _) in enumerate(launches) if fam == LAST_KERNEL]
    if not ends:
        raise ValueError(f"no {LAST_KERNEL} launch: not a profile of whole forwards")
    start = ends[-2] + 1 if len(ends) > 1 else 0
    return launches[start:ends[-1] + 1]


def read_launches(path: Path) -> list[tuple[str, float, dict[str, float]]]:
    """(family, time in ns, utilisation metrics) of every profiled launch, in launch order."""
    rows = list(csv.reader(path.read_text(errors="replace").splitlines()))
    start = next((i for i, r in enumerate(rows) if "Kernel Name" in r), None)
    if start is None:
        raise ValueError(f"{path}: no ncu table (first lines: {rows[:3]})")
    header, units = rows[start], rows[start + 1]
    col = {h: i for i, h in enumerate(header)}
    scale = UNIT_NS.get(units[col[TIME]], 1.0)
    out = []
    for r in rows[start + 2:]:
        if len(r) != len(header):
            continue
        util = {k: float(r[col[m]].replace(",", "")) for k, m in UTIL.items()
                if m in col and r[col[m]] not in ("", "n/a")}
        out.append((family(r[col["Kernel Name"]]), float(r[col[TIME]].replace(",", "")) * scale, util))
    return out


def summarize(path: Path) -> None:
    """Print the per-family table of the last forward in ``path``."""
    forward = last_forward(read_launches(path))
    total: dict[str, float] = defaultdict(float)
    weighted: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    count: dict[str, int] = defaultdict(int)
    for fam, t, util in forward:
        total[fam] += t
        count[fam] += 1
        for k, v in util.items():
            weighted[fam][k] += t * v
    grand = sum(total.values())
    print(f"\n{path.name}: last forward, {len(forward)} kernels, {grand / 1e3:.1f} us of kernel time")
    print(f"{'kernel':36s} {'us':>9s} {'share':>6s} {'launch':>6s} " + " ".join(f"{k:>8s}" for k in UTIL))
    for fam, t in sorted(total.items(), key=lambda kv: -kv[1]):
        u = " ".join(f"{weighted[fam][k] / t:8.1f}" if t and k in weighted[fam] else f"{'-':>8s}" for k in UTIL)
        print(f"{fam[:36]:36s} {t / 1e3:9.1f} {100 * t / grand:5.1f}% {count[fam]:6d} {u}")


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        summarize(Path(arg))
