"""The wgmma tile-sparse GEMM's weight layout, checked on the CPU (packing is host code; no GPU needed).

``tests/wgmma_records_check.cu`` is built with nvcc together with ``hopper_sparse_gemm.cu`` and run: for records of
G = 1, 2 and 4 stacked tile rows it checks that each record row holds exactly the union of its rows' kept tile
columns in ascending order, that each record's operand is the weight's 16G x 16 block in core-matrix order (zeros
past the last row), that the per-chunk cuts point at the first record of each K chunk (three chunks, the last
partial), and that ``choose_group`` picks G = 4 for [64, 16] tiles, 2 for [32, 16] and 1 for random 16x16 tiles.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NVCC = shutil.which("nvcc")


@pytest.mark.skipif(NVCC is None, reason="nvcc not installed")
def test_records_match_the_weights(tmp_path):
    exe = tmp_path / "wgmma_records_check"
    build = subprocess.run(
        [NVCC, "-std=c++17", "-O1", "--expt-relaxed-constexpr", "-gencode", "arch=compute_90a,code=sm_90a",
         "-I", str(ROOT / "cuda_lib" / "include"), "-I", str(ROOT / "cuda_lib" / "src"),
         str(ROOT / "tests" / "wgmma_records_check.cu"), str(ROOT / "cuda_lib" / "src" / "cuda" / "prepare.cu"),
         "-o", str(exe)], capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, build.stderr[-4000:]
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stdout[-4000:] + run.stderr[-2000:]
