"""GPU correctness of libet's CUDA backend (run on a machine with a GPU).

For random-weight BERT-base / BERT-large / MiniLM classifiers with random tile masks (16x16; 64x16 and 32x16
for the wgmma kernel's wider records; 0-95% sparsity), random pruned heads and pruned head dimensions, on fresh
random ragged batches (lengths 1..512, batches 1..128), compares the CUDA engine (fp16, and bf16 in three MiniLM
cases) with a float64 PyTorch reference (HF ``transformers`` in float64 on the GPU) and, on the smaller cases,
with libet's CPU backend: relative error ||out - ref|| / ||ref|| of the last hidden states and of the logits,
packed (padding-free) and padded paths. The reference that decides pass/fail runs the weights the engine holds
(the model's weights rounded to fp16 / bf16, then computed in float64), so it measures the kernels'
arithmetic; the error against the unrounded weights (which adds the rounding of the weights themselves,
a property of the number format that PyTorch's fp16 model has too) is reported beside it. The engine's workspace
is poisoned with NaNs before every forward (ET_POISON_WORKSPACE=1), so any element a kernel fails to write shows
up. An out-of-memory case checks that ET_ERR_OUT_OF_MEMORY is returned and the model stays usable; four threads
sharing one model get the sequential results. Prints a pass/fail table; exits 1 on any failure.

    python cuda_lib/gpu/check.py --lib BUILD/libet.so --work /tmp/et-check [--json OUT.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ["ET_POISON_WORKSPACE"] = "1"  # read by the engine at load
# Every pruned layer (tile density below 1) is stored tiled and runs through a tile-sparse kernel at every batch
# size: the mma.sync one, or in cases with wgmma=True the opt-in wgmma one (sm_90) for batches of more than
# wgmma_rows token rows; except in cases with tiled=False (run_case sets the thresholds per case).
# Unpruned layers go through the dense GEMMs: the check covers every GEMM path.
os.environ["ET_SPARSE_MAX_DENSITY"] = "1.0"
os.environ["ET_SPARSE_MAX_ROWS"] = "1000000000"

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from pipeline_steps import random_bert  # noqa: E402
from pipeline_steps.engine import Engine, EngineError  # noqa: E402

TOL = {"fp16": 2e-3, "bf16": 1.6e-2}
OOM_STATUS = 5


@dataclass
class Case:
    name: str
    shape: str
    density: float
    head_frac: float = 0.0
    dim_frac: float = 0.0
    batches: list[list[int]] = field(default_factory=list)  # lengths of each batch to run
    precision: str = "fp16"
    cpu: bool = False        # also compare with the CPU backend
    sparse_bm: str = "0"     # ET_SPARSE_BM: rows of X per block of the tile-sparse kernel (0 = auto)
    tiled: bool = True       # pruned layers through the tile-sparse kernel; False: their dense copies through
                             # cuBLASLt (pruned, odd N and K)
    hopper_rows: str = ""    # ET_HOPPER_GEMM_MAX_ROWS (CUTLASS GEMMs for batches up to this many rows); "": default
    wgmma: bool = False      # tiled cases: pruned layers through the wgmma tile-sparse kernel (sm_90, opt-in) for
                             # batches of more than wgmma_rows token rows; False: the mma.sync kernel at every batch
    wgmma_rows: str = ""     # ET_HOPPER_SPARSE_MIN_ROWS; "": the engine's default
    wgmma_group: str = "0"   # ET_HOPPER_SPARSE_GROUP: tile rows of the wgmma kernel's records (0: chosen per weight)
    tile: tuple[int, int] = (16, 16)  # the random masks' tile shape
    vocab: int = 2000


def rand_lengths(rng: np.random.Generator, n: int, lo: int, hi: int) -> list[int]:
    return rng.integers(lo, hi + 1, size=n).tolist()


def cases(rng: np.random.Generator) -> list[Case]:
    r = lambda n, lo, hi: rand_lengths(rng, n, lo, hi)  # noqa: E731
    return [
        Case("minilm dense", "minilm", 1.0, batches=[[1], [7, 16, 33], r(16, 1, 128), [300, 45]], cpu=True),
        Case("minilm 50% +heads +dims", "minilm", 0.5, 0.25, 0.25, batches=[[5], r(12, 1, 200)], cpu=True),
        Case("minilm 95% +heads", "minilm", 0.05, 0.5, 0.0, batches=[r(9, 1, 128)], cpu=True),
        Case("minilm bf16 40%", "minilm", 0.6, 0.25, 0.1, batches=[r(8, 1, 160)], precision="bf16"),
        Case("base dense", "bert-base", 1.0,
             batches=[[1], [128], [40, 51], [128] * 32, r(32, 16, 128), [512, 333, 77], r(8, 1, 512),
                      r(128, 1, 64)]),
        Case("base 70% +heads +dims cuBLASLt", "bert-base", 0.3, 0.25, 0.25, batches=[[128], [3, 60], [1]],
             tiled=False, hopper_rows="0"),
        Case("base 70% +heads +dims CUTLASS", "bert-base", 0.3, 0.25, 0.25,
             batches=[[128], [3, 60], [1], r(32, 16, 128)], tiled=False, hopper_rows="1000000000"),
        Case("base dense CUTLASS", "bert-base", 1.0, batches=[[128] * 32, r(16, 1, 300)], hopper_rows="1000000000"),
        Case("base 80% +heads +dims", "bert-base", 0.2, 0.25, 0.25, batches=[r(32, 16, 128), [512, 300, 17]],
             cpu=True),
        Case("base 95% +heads", "bert-base", 0.05, 0.5, 0.0, batches=[r(16, 1, 200)]),
        Case("base 80% sparse BM 128", "bert-base", 0.2, 0.25, 0.25, batches=[[77], r(24, 1, 160)], sparse_bm="128"),
        Case("base 60% sparse BM 64", "bert-base", 0.4, 0.0, 0.25, batches=[[1], r(3, 1, 90)], sparse_bm="64"),
        Case("base 80% sparse BM 32", "bert-base", 0.2, 0.0, 0.0, batches=[r(20, 1, 128)], sparse_bm="32"),
        Case("base 80% +heads +dims wgmma", "bert-base", 0.2, 0.25, 0.25,
             batches=[[1], [128], [128] * 32, r(40, 16, 128), [512, 300, 17]], wgmma=True, wgmma_rows="0"),
        Case("base 95% +heads wgmma", "bert-base", 0.05, 0.5, 0.0, batches=[[3], r(24, 1, 200)], wgmma=True,
             wgmma_rows="0"),
        Case("large 60% +heads wgmma", "bert-large", 0.4, 0.25, 0.1, batches=[r(12, 1, 300)], wgmma=True,
             wgmma_rows="0"),
        Case("minilm bf16 70% wgmma", "minilm", 0.3, 0.25, 0.25, batches=[r(20, 1, 128)], precision="bf16",
             wgmma=True, wgmma_rows="0"),
        Case("base 80% [64,16] +heads +dims wgmma", "bert-base", 0.2, 0.25, 0.25, tile=(64, 16),
             batches=[[1], [128], [128] * 32, r(40, 16, 128)], wgmma=True, wgmma_rows="0"),
        Case("base 80% +dims wgmma G2", "bert-base", 0.2, 0.0, 0.25, batches=[r(24, 16, 128), [512, 300, 17]],
             wgmma=True, wgmma_rows="0", wgmma_group="2"),
        Case("base 80% +heads wgmma G4", "bert-base", 0.2, 0.25, 0.0, batches=[r(16, 16, 128), [3]], wgmma=True,
             wgmma_rows="0", wgmma_group="4"),
        Case("large 60% [64,16] +heads wgmma", "bert-large", 0.4, 0.25, 0.1, tile=(64, 16), batches=[r(12, 1, 300)],
             wgmma=True, wgmma_rows="0"),
        Case("minilm bf16 70% [32,16] wgmma", "minilm", 0.3, 0.25, 0.0, tile=(32, 16), batches=[r(20, 1, 128)],
             precision="bf16", wgmma=True, wgmma_rows="0"),
        Case("base 30%", "bert-base", 0.7, 0.0, 0.0, batches=[r(24, 1, 256)]),
        Case("large dense", "bert-large", 1.0, batches=[[512, 271], r(128, 1, 128), [100]]),
        Case("large 60% +heads", "bert-large", 0.4, 0.25, 0.1, batches=[r(8, 1, 512)]),
    ]


def reference(model64, tokens: np.ndarray, segments: np.ndarray, lengths: list[int], device) -> tuple[np.ndarray, np.ndarray]:
    """Float64 HF logits and the packed last hidden states of a ragged batch (padded + attention mask)."""
    b, L = len(lengths), max(lengths)
    ids = torch.zeros(b, L, dtype=torch.long)
    seg = torch.zeros(b, L, dtype=torch.long)
    mask = torch.zeros(b, L, dtype=torch.long)
    off = 0
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.from_numpy(tokens[off:off + n].astype(np.int64))
        seg[i, :n] = torch.from_numpy(segments[off:off + n].astype(np.int64))
        mask[i, :n] = 1
        off += n
    with torch.no_grad():
        out = model64(input_ids=ids.to(device), token_type_ids=seg.to(device), attention_mask=mask.to(device),
                      output_hidden_states=True)
    hidden = out.hidden_states[-1].cpu().numpy()
    packed = np.concatenate([hidden[i, :n] for i, n in enumerate(lengths)])
    return out.logits.cpu().numpy(), packed


def rel(a: np.ndarray, ref: np.ndarray) -> float:
    a64, r64 = a.astype(np.float64), ref.astype(np.float64)
    if not np.all(np.isfinite(a64)):
        return float("inf")
    return float(np.linalg.norm(a64 - r64) / max(np.linalg.norm(r64), 1e-30))


def run_case(case: Case, lib: Path, work: Path, rng: np.random.Generator, device) -> list[dict]:
    seed = int(rng.integers(1 << 30))
    model = random_bert.make_model(case.shape, vocab=case.vocab, seed=seed, gain=2.0)
    masks = random_bert.random_pruning(model, case.density, tile=case.tile, head_frac=case.head_frac,
                                       dim_frac=case.dim_frac, seed=seed + 1)
    manifest = random_bert.export(model, masks, work / f"m{seed}")
    model16 = copy.deepcopy(model).half().to(device) if case.precision == "fp16" else None  # torch's own fp16 error
    held = torch.float16 if case.precision == "fp16" else torch.bfloat16
    model64 = copy.deepcopy(model).to(held).double().to(device)  # the weights the engine holds, in float64
    model64_w32 = model.double().to(device)                       # the unrounded weights, in float64
    rows = []
    os.environ["ET_SPARSE_BM"] = case.sparse_bm  # read at load
    os.environ["ET_SPARSE_MAX_DENSITY"] = "1.0" if case.tiled else "0"
    os.environ["ET_HOPPER_SPARSE_MAX_DENSITY"] = "1.0" if case.tiled and case.wgmma else "0"
    os.environ["ET_HOPPER_SPARSE_GROUP"] = case.wgmma_group
    if case.wgmma_rows:
        os.environ["ET_HOPPER_SPARSE_MIN_ROWS"] = case.wgmma_rows
    else:
        os.environ.pop("ET_HOPPER_SPARSE_MIN_ROWS", None)
    if case.hopper_rows:
        os.environ["ET_HOPPER_GEMM_MAX_ROWS"] = case.hopper_rows
    else:
        os.environ.pop("ET_HOPPER_GEMM_MAX_ROWS", None)
    with Engine(lib, manifest, backend="cuda", precision=case.precision) as eng:
        cpu = Engine(lib, manifest, backend="cpu") if case.cpu else None
        try:
            for lengths in case.batches:
                total = sum(lengths)
                tokens = rng.integers(0, case.vocab, size=total, dtype=np.int32)
                segments = rng.integers(0, 2, size=total, dtype=np.int32)
                ref_logits, ref_hidden = reference(model64, tokens, segments, lengths, device)
                w32_logits, w32_hidden = reference(model64_w32, tokens, segments, lengths, device)
                if model16 is not None:
                    t_logits, t_hidden = reference(model16, tokens, segments, lengths, device)
                row = {"case": case.name, "precision": case.precision, "batch": len(lengths),
                       "max_len": max(lengths), "tokens": total, "tile_density": case.density}
                for padded in (False, True):
                    logits, hidden = eng.forward(tokens, lengths, segments, padded=padded, return_hidden=True)
                    tag = "padded" if padded else "packed"
                    row[f"{tag}_hidden_rel"] = rel(hidden, ref_hidden)
                    row[f"{tag}_logits_rel"] = rel(logits, ref_logits)
                    row[f"w32_{tag}_hidden_rel"] = rel(hidden, w32_hidden)
                    row[f"w32_{tag}_logits_rel"] = rel(logits, w32_logits)
                if cpu is not None:
                    c_logits, c_hidden = cpu.forward(tokens, lengths, segments, return_hidden=True)
                    row["cpu_hidden_rel"] = rel(hidden, c_hidden)
                    row["cpu_vs_ref_hidden_rel"] = rel(c_hidden, ref_hidden)
                if model16 is not None:
                    row["torch_fp16_hidden_rel"] = rel(t_hidden, ref_hidden)
                    row["torch_fp16_logits_rel"] = rel(t_logits, ref_logits)
                    row["w32_torch_fp16_hidden_rel"] = rel(t_hidden, w32_hidden)
                errs = [v for k, v in row.items()
                        if k.endswith("_rel") and not k.startswith(("cpu_vs_ref", "torch_", "w32_"))]
                row["max_rel"] = max(errs)
                row["pass"] = row["max_rel"] <= TOL[case.precision]
                rows.append(row)
                print(json.dumps(row), flush=True)
        finally:
            if cpu is not None:
                cpu.close()
    del model64, model64_w32, model16
    torch.cuda.empty_cache()
    return rows


def oom_case(lib: Path, work: Path, rng: np.random.Generator) -> dict:
    """Fill the GPU from PyTorch, ask for a huge batch (ET_ERR_OUT_OF_MEMORY expected), free, run again."""
    model = random_bert.make_model("bert-base", vocab=2000, seed=7)
    manifest = random_bert.export(model, random_bert.random_pruning(model, 1.0), work / "oom")
    small = [100, 50]
    tok_small = rng.integers(0, 2000, size=sum(small), dtype=np.int32)
    big = [512] * 128
    tok_big = rng.integers(0, 2000, size=sum(big), dtype=np.int32)
    with Engine(lib, manifest, backend="cuda") as eng:
        before = eng.forward(tok_small, small)
        free, _ = torch.cuda.mem_get_info()
        hog = torch.empty(max(free - (192 << 20), 0), dtype=torch.uint8, device="cuda")
        status = None
        try:
            eng.forward(tok_big, big)
        except EngineError as exc:
            status = exc.status
            message = str(exc)
        del hog
        torch.cuda.empty_cache()
        after = eng.forward(tok_small, small)
        big_ok = bool(np.all(np.isfinite(eng.forward(tok_big, big))))
    row = {"case": "out-of-memory", "status": status, "message": message if status else "",
           "reuse_rel": rel(after, before), "big_after_free_finite": big_ok}
    row["pass"] = bool(status == OOM_STATUS and row["reuse_rel"] == 0.0 and big_ok)
    print(json.dumps(row), flush=True)
    return row


def concurrency_case(lib: Path, work: Path, rng: np.random.Generator) -> dict:
    """Four threads calling forward on one CUDA model give the same logits as sequential calls."""
    from concurrent.futures import ThreadPoolExecutor

    model = random_bert.make_model("minilm", vocab=2000, seed=9)
    manifest = random_bert.export(model, random_bert.random_pruning(model, 0.5, seed=10), work / "conc")
    batches = [rand_lengths(rng, 8, 1, 200) for _ in range(8)]
    inputs = [(rng.integers(0, 2000, size=sum(b), dtype=np.int32), b) for b in batches]
    with Engine(lib, manifest, backend="cuda") as eng:
        sequential = [eng.forward(t, b) for t, b in inputs]
        with ThreadPoolExecutor(max_workers=4) as pool:
            parallel = list(pool.map(lambda tb: eng.forward(*tb), inputs * 3))
    worst = max(rel(p, sequential[i % len(inputs)]) for i, p in enumerate(parallel))
    row = {"case": "concurrent forward", "status": 0, "reuse_rel": worst, "pass": worst == 0.0}
    print(json.dumps(row), flush=True)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lib", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--json", type=Path, default=None, help="also write every row here")
    ap.add_argument("--seed", type=int, default=int(time.time()) % 100000)
    ap.add_argument("--only", default="", help="run only cases whose name contains this")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    device = torch.device("cuda")
    args.work.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for case in cases(rng):
        if args.only and args.only not in case.name:
            continue
        t0 = time.time()
        try:
            rows += run_case(case, args.lib, args.work, rng, device)
        except Exception as exc:  # a crash of one case is a failure of that case, not of the script
            rows.append({"case": case.name, "pass": False, "error": f"{type(exc).__name__}: {exc}"})
            print(json.dumps(rows[-1]), flush=True)
        print(f"# {case.name}: {time.time() - t0:.1f}s", flush=True)
    if not args.only:
        for name, fn in (("out-of-memory", oom_case), ("concurrent forward", concurrency_case)):
            try:
                rows.append(fn(args.lib, args.work, rng))
            except Exception as exc:
                rows.append({"case": name, "pass": False, "error": f"{type(exc).__name__}: {exc}"})
    if args.json:
        args.json.write_text(json.dumps({"seed": args.seed, "rows": rows}, indent=1))
    print(f"\nseed {args.seed}; tolerance fp16 {TOL['fp16']}, bf16 {TOL['bf16']} (relative L2 vs float64 on the weights "
          "the engine holds; 'w32' columns: vs float64 on the unrounded weights)")
    print(f"{'case':28s} {'batch':>5s} {'maxlen':>6s} {'packed':>9s} {'padded':>9s} {'vs cpu':>9s} {'torch16':>9s} "
          f"{'logits':>9s} {'w32':>9s} {'w32 t16':>9s}  result")
    for r in rows:
        if "error" in r:
            print(f"{r['case']:28s} {'':>5s} {'':>6s} {'':>9s} {'':>9s} {'':>9s}  FAIL {r['error'][:80]}")
        elif r["case"] in ("out-of-memory", "concurrent forward"):
            print(f"{r['case']:28s} status={r['status']} reuse_rel={r['reuse_rel']:.1e}  {'pass' if r['pass'] else 'FAIL'}")
        else:
            cpu = f"{r['cpu_hidden_rel']:.2e}" if "cpu_hidden_rel" in r else "-"
            t16 = f"{r['torch_fp16_hidden_rel']:.2e}" if "torch_fp16_hidden_rel" in r else "-"
            w16 = f"{r['w32_torch_fp16_hidden_rel']:.2e}" if "w32_torch_fp16_hidden_rel" in r else "-"
            print(f"{r['case']:28s} {r['batch']:5d} {r['max_len']:6d} {r['packed_hidden_rel']:9.2e} "
                  f"{r['padded_hidden_rel']:9.2e} {cpu:>9s} {t16:>9s} {r['packed_logits_rel']:9.2e} "
                  f"{r['w32_packed_hidden_rel']:9.2e} {w16:>9s}  {'pass' if r['pass'] else 'FAIL'} "
                  f"(max {r['max_rel']:.2e})")
    failed = sum(not r["pass"] for r in rows)
    print(f"{len(rows) - failed}/{len(rows)} passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
