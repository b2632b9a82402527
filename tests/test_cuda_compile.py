"""The CUDA backend's sources compile for sm_80 and sm_90 (CI has nvcc but no GPU).

Each ``cuda_lib/src/cuda/*.cu`` is compiled to an object file with
``-gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90``; the resource report is
checked for register spills in the kernels (local-memory traffic would cost the engine its speed).
Skipped when nvcc is not installed; a source that includes cuBLASLt is skipped when the cuBLAS
headers are not installed next to nvcc (they come with the full CUDA toolkit, not with nvcc alone).
``hopper_gemm.cu`` (CUTLASS's Hopper kernels) is built for sm_90a only, as CMake builds it, with the headers of
the nvidia-cutlass package (requirements-nodeps.txt), and the engine is compiled with it enabled too.
``hopper_sparse_gemm.cu`` (the wgmma tile-sparse GEMM) is built for sm_90a only as well, needs no CUTLASS, and must
compile without ptxas serializing its warpgroup MMAs (its "Potential Performance Loss" notes, C7514 / C7520).
``cuda_lib/gpu/wgmma_clocks.cu`` (that kernel with its clock64 stamps, a diagnostic run by ``run_all.sh clocks``)
compiles too.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gpu_scripts import load

ROOT = Path(__file__).resolve().parent.parent
CUDA_DIR = ROOT / "cuda_lib" / "src" / "cuda"
NVCC = shutil.which("nvcc")
SOURCES = sorted(CUDA_DIR.glob("*.cu"))
HOPPER = "hopper_gemm.cu"  # sm_90a only (CMakeLists.txt)
HOPPER_SPARSE = "hopper_sparse_gemm.cu"  # sm_90a only, no CUTLASS
CLOCKS = ROOT / "cuda_lib" / "gpu" / "wgmma_clocks.cu"  # the wgmma kernel with its stamps (ET_HOPPER_SPARSE_CLOCKS)
cutlass_include = load("cutlass_tiles").cutlass_include  # the nvidia-cutlass headers, or None


def _cublas_headers() -> bool:
    include = Path(NVCC).resolve().parent.parent / "include"
    return (include / "cublasLt.h").is_file()


def _compile(src: Path, out_dir: Path, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    if src.name == HOPPER:
        arch = ["-gencode", "arch=compute_90a,code=sm_90a", "-DCUTLASS_ENABLE_GDC_FOR_SM90", "-DNDEBUG",
                "-I", str(cutlass_include())]
    elif src.name in (HOPPER_SPARSE, CLOCKS.name):
        arch = ["-gencode", "arch=compute_90a,code=sm_90a"]
    else:
        arch = ["-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90"]
    cmd = [NVCC, "-std=c++17", "-O3", "-c", str(src), "-o", str(out_dir / (src.stem + "".join(extra) + ".o")),
           *arch, "-I", str(ROOT / "cuda_lib" / "include"), "-I", str(ROOT / "cuda_lib" / "src"),
           "-DET_WITH_CUDA", "--expt-relaxed-constexpr", "-Xptxas", "-v", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("cuda_obj")
    jobs = {s.name: (s, ()) for s in SOURCES if (_cublas_headers() or "cublasLt.h" not in _includes(s))
            and (s.name != HOPPER or cutlass_include())}
    if cutlass_include():  # the engine with the CUTLASS path compiled in
        jobs["cuda_backend.cu with hopper"] = (CUDA_DIR / "cuda_backend.cu", ("-DET_WITH_HOPPER_GEMM",))
    jobs["cuda_backend.cu with hopper sparse"] = (CUDA_DIR / "cuda_backend.cu", ("-DET_WITH_HOPPER_SPARSE",))
    jobs[CLOCKS.name] = (CLOCKS, ("-DET_HOPPER_SPARSE_CLOCKS",))
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(jobs, pool.map(lambda job: _compile(job[0], out, job[1]), jobs.values())))


def _includes(src: Path) -> str:
    """The source plus the project headers it includes directly."""
    text = src.read_text()
    for inc in re.findall(r'#include "([^"]+)"', text):
        header = CUDA_DIR / inc
        if header.is_file():
            text += header.read_text()
    return text


def test_sources_exist():
    assert {"cuda_backend.cu", "sparse_gemm.cu", "attention.cu"} <= {s.name for s in SOURCES}


@pytest.mark.parametrize("src", SOURCES, ids=lambda s: s.name)
def test_compiles_for_sm80_and_sm90(src: Path, compiled):
    if src.name not in compiled:
        why = "CUTLASS's headers (nvidia-cutlass)" if src.name == HOPPER else "the cuBLAS headers next to nvcc"
        pytest.skip(f"{src.name}: {why} not installed")
    result = compiled[src.name]
    assert result.returncode == 0, result.stderr[-4000:]
    targets = set(re.findall(r"for '(sm_\d+a?)'", result.stderr))
    if src.name in (HOPPER, HOPPER_SPARSE):
        assert targets == {"sm_90a"}, f"compiled for {targets}"
    elif "__global__" in src.read_text():
        assert targets == {"sm_80", "sm_90"}, f"compiled for {targets}"
    spills = [line for line in result.stderr.splitlines() if re.search(r"[1-9]\d* bytes spill (stores|loads)", line)]
    assert not spills, f"{src.name}: register spills:\n" + "\n".join(spills)


def test_engine_compiles_with_the_cutlass_path(compiled):
    if "cuda_backend.cu with hopper" not in compiled:
        pytest.skip("CUTLASS's headers (nvidia-cutlass) not installed")
    result = compiled["cuda_backend.cu with hopper"]
    assert result.returncode == 0, result.stderr[-4000:]


def test_wgmma_sparse_kernel_is_not_serialized(compiled):
    result = compiled[HOPPER_SPARSE]
    assert result.returncode == 0, result.stderr[-4000:]
    lost = [line for line in result.stderr.splitlines() if "Potential Performance Loss" in line]
    assert not lost, "ptxas serializes the warpgroup MMAs:\n" + "\n".join(lost)


def test_engine_compiles_with_the_wgmma_sparse_path(compiled):
    result = compiled["cuda_backend.cu with hopper sparse"]
    assert result.returncode == 0, result.stderr[-4000:]


def test_wgmma_clock_diagnostic_compiles(compiled):
    result = compiled[CLOCKS.name]
    assert result.returncode == 0, result.stderr[-4000:]
