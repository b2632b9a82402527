"""Time CUTLASS Hopper GEMM configurations (cutlass_tiles.cu) against cuBLAS on BERT-base's linear layers.

For each token-row count and each of the four encoder GEMMs (QKV, O, FFN1, FFN2), every configuration runs
twelve launches on twelve different weight matrices (a forward's worth, so the weights come from HBM, not L2)
captured in one CUDA graph, CUTLASS's launched early as in libet; cuBLAS is PyTorch's torch.addmm (cuBLASLt's
heuristic choice) in the same kind of graph. Each configuration's output is checked against a float32 product
first. Prints microseconds per GEMM, TFLOP/s and the speedup over cuBLAS (its time / the configuration's);
--json writes the rows.

Usage on a GPU machine: python3 cuda_lib/gpu/cutlass_tiles.py --json out.json [--rows 128,4096]
(builds the configurations with nvcc first, in parallel, unless --lib names a built library).
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import site
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
# Same order as cutlass_tiles.cu's Table: features x rows tile, cluster, schedule.
NAMES = ["64x64 ws", "128x128 coop", "128x128 coop c2x1", "128x256 coop", "128x256 coop c2x1",
         "64x128 ping", "64x256 ping", "128x128 ping", "128x64 coop", "64x128 ping c1x2"]
GEMMS = {"qkv": (2304, 768), "o": (768, 768), "ffn1": (3072, 768), "ffn2": (768, 3072)}  # n, k (BERT-base)
LAYERS = 12


def cutlass_include() -> Path | None:
    """The CUTLASS include folder of the PyPI package nvidia-cutlass (as cuda_lib/CMakeLists.txt finds it), or None."""
    for d in site.getsitepackages() + sys.path:
        p = Path(d) / "cutlass_library" / "source" / "include"
        if d and (p / "cutlass" / "cutlass.h").is_file():
            return p
    return None


def nvcc_command(index: int, obj: Path, include: Path) -> list[str]:
    """The nvcc command that compiles configuration `index` of cutlass_tiles.cu into the object file `obj`."""
    return ["nvcc", "-std=c++17", "-O3", "--expt-relaxed-constexpr", "-gencode", "arch=compute_90a,code=sm_90a",
            "-Xcompiler", "-fPIC", "-DCUTLASS_ENABLE_GDC_FOR_SM90", "-DNDEBUG", f"-DET_TILE_CFG={index}",
            f"-I{include}", f"-I{HERE.parent / 'src' / 'cuda'}", "-c", str(HERE / "cutlass_tiles.cu"), "-o",
            str(obj)]


def build(out: Path, jobs: int) -> Path:
    """Compile every configuration (one nvcc per configuration, `jobs` at once) into one shared library."""
    out.mkdir(parents=True, exist_ok=True)
    include = cutlass_include()
    if include is None:
        raise SystemExit("CUTLASS headers not found: pip install --no-deps nvidia-cutlass==4.2.0.0")

    def one(i: int) -> Path:
        obj = out / f"cfg{i}.o"
        subprocess.run(nvcc_command(i, obj, include), check=True)
        return obj

    with ThreadPoolExecutor(jobs) as pool:
        objs = list(pool.map(one, range(len(NAMES))))
    lib = out / "libcutlass_tiles.so"
    subprocess.run(["nvcc", "-shared", "-o", str(lib), *map(str, objs)], check=True)
    return lib


def graph_us(launch, replays: int = 20) -> float:
    """Median microseconds per launch of `launch(layer)` over LAYERS layers captured in one graph."""
    launch(0)  # settles lazy initialisation outside the capture
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for layer in range(LAYERS):
            launch(layer)
    g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1000.0 / LAYERS)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lib", type=Path, help="built libcutlass_tiles.so (default: build into --build-dir)")
    ap.add_argument("--build-dir", type=Path, default=Path("/tmp/cutlass-tiles"))
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--rows", default="128,256,2374,4096", help="token-row counts, comma-separated")
    ap.add_argument("--configs", default="", help="configuration indices to time (default: all)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    lib_path = args.lib or build(args.build_dir, args.jobs)
    lib = ctypes.CDLL(str(lib_path))
    configs = [int(c) for c in args.configs.split(",")] if args.configs else list(range(len(NAMES)))
    fns = {}
    for i in configs:
        fn = getattr(lib, f"et_tile_gemm_{i}")
        fn.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int] * 5 + [ctypes.c_void_p]
        fn.restype = ctypes.c_int
        fns[i] = fn
    dev = torch.device("cuda")
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    print(f"{torch.cuda.get_device_name(dev)}, {sms} SMs; torch {torch.__version__}")
    gen = torch.Generator(device=dev).manual_seed(0)
    rows_list = [int(r) for r in args.rows.split(",")]
    results = []
    header = f"{'rows':>5} {'gemm':>5} {'config':>20} {'us':>8} {'TFLOP/s':>8} {'speedup':>9} {'rel err':>9}"
    print(header)
    for rows in rows_list:
        for gname, (n, k) in GEMMS.items():
            ws = [torch.randn(n, k, device=dev, dtype=torch.float16, generator=gen) * k ** -0.5
                  for _ in range(LAYERS)]
            bs = [torch.randn(n, device=dev, dtype=torch.float16, generator=gen) for _ in range(LAYERS)]
            x = torch.randn(rows, k, device=dev, dtype=torch.float16, generator=gen)
            y = torch.empty(rows, n, device=dev, dtype=torch.float16)
            ref = (x.float() @ ws[0].float().T + bs[0].float()).double()
            flop = 2.0 * rows * n * k
            base = graph_us(lambda l: torch.addmm(bs[l], x, ws[l].T, out=y))
            results.append({"rows": rows, "gemm": gname, "config": "cuBLAS (torch.addmm)", "us": base})
            print(f"{rows:>5} {gname:>5} {'cuBLAS (torch.addmm)':>20} {base:8.2f} {flop / base / 1e6:8.1f}"
                  f" {1.0:9.3f} {'':>9}")
            for i, fn in fns.items():
                def launch(layer: int, fn=fn) -> None:
                    rc = fn(ws[layer].data_ptr(), x.data_ptr(), bs[layer].data_ptr(), y.data_ptr(), rows, n, k, sms,
                            1, torch.cuda.current_stream().cuda_stream)
                    if rc != 0:
                        raise RuntimeError(f"{NAMES[i]}: rc {rc}")
                y.fill_(float("nan"))
                launch(0)
                torch.cuda.synchronize()
                err = ((y.double() - ref).norm() / ref.norm()).item()
                us = graph_us(launch)
                results.append({"rows": rows, "gemm": gname, "config": NAMES[i], "us": us, "rel_err": err})
                print(f"{rows:>5} {gname:>5} {NAMES[i]:>20} {us:8.2f} {flop / us / 1e6:8.1f} {base / us:9.3f}"
                      f" {err:9.2e}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"device": torch.cuda.get_device_name(dev), "rows": results}, indent=1))


if __name__ == "__main__":
    main()
