"""Stage ``build_lib``: CMake build of ``cuda_lib/`` (libet.so + et_infer), the CUDA backend when allowed.

``lib.cuda`` maps to ``-DET_CUDA`` (auto: CUDA only when nvcc, cuBLASLt and a GPU are found; cuBLASLt
comes from the toolkit or, when it has none, from an installed nvidia-cublas wheel). The
build folder is ``cuda_lib/build-<build_type>-<cuda>`` inside the project, kept between runs so
rebuilds are incremental; the stage copies ``libet.so`` and ``et_infer`` into its output folder.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from . import stage, tracking
from .config import PROJECT_ROOT

SOURCE_DIR = PROJECT_ROOT / "cuda_lib"


class BuildError(RuntimeError):
    """CMake configure or build failed; the message holds the tail of its output."""


def cuda_mode(value: object) -> str:
    """``lib.cuda`` (auto/on/off, or a YAML boolean) as the CMake value AUTO/ON/OFF."""
    if isinstance(value, bool):
        return "ON" if value else "OFF"
    mode = str(value).upper()
    if mode not in {"AUTO", "ON", "OFF"}:
        raise ValueError(f"lib.cuda must be auto, on or off, got {value!r}")
    return mode


def toolkit_has_cublaslt(nvcc: str | None = None) -> bool:
    """True when the CUDA toolkit next to ``nvcc`` ships cuBLASLt's header."""
    nvcc = nvcc or shutil.which("nvcc")
    if not nvcc:
        return False
    root = Path(nvcc).resolve().parent.parent
    return any((root / sub / "cublasLt.h").is_file() for sub in ("include", "targets/x86_64-linux/include"))


def find_cublas_root(search_dirs: list[Path] | None = None) -> Path | None:
    """A folder with ``include/cublasLt.h`` and ``lib/libcublasLt.so*`` from an installed nvidia-cublas wheel
    (PyTorch's CUDA builds depend on it), for a CUDA toolkit without cuBLAS; None when there is none."""
    import site

    dirs = search_dirs if search_dirs is not None else [Path(d) for d in {*site.getsitepackages(), *sys.path} if d]
    for d in dirs:
        for header in sorted((Path(d) / "nvidia").glob("**/include/cublasLt.h")):
            root = header.parent.parent
            if any(root.glob("lib*/libcublasLt.so*")):
                return root
    return None


def _run(cmd: list[str], log: list[str]) -> None:
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log.append(f"$ {' '.join(cmd)}\n{proc.stdout}")
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-40:])
        raise BuildError(f"{' '.join(cmd[:3])} ... failed with exit code {proc.returncode}:\n{tail}")


def _version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return "not found"
    lines = [ln for ln in (out.stdout or out.stderr).splitlines() if ln.strip()]
    return lines[-1].strip() if "nvcc" in cmd[0] and lines else (lines[0].strip() if lines else "unknown")


def cmake_build(build_dir: Path, cuda: str = "AUTO", build_type: str = "Release", jobs: int = 2,
                source_dir: Path = SOURCE_DIR) -> dict:
    """Configure and build libet + et_infer in ``build_dir``; returns paths, backend and timing."""
    build_dir = Path(build_dir)
    cmake = shutil.which("cmake") or str(Path(sys.executable).parent / "cmake")
    log: list[str] = []
    t0 = time.monotonic()
    extra = []
    if cuda != "OFF" and not toolkit_has_cublaslt():
        cublas = find_cublas_root()
        if cublas is not None:
            extra.append(f"-DET_CUBLAS_ROOT={cublas}")
            log.append(f"cuBLASLt from {cublas} (the CUDA toolkit has none)")
    _run([cmake, "-S", str(source_dir), "-B", str(build_dir), f"-DCMAKE_BUILD_TYPE={build_type}",
          f"-DET_CUDA={cuda}", *extra], log)
    t1 = time.monotonic()
    _run([cmake, "--build", str(build_dir), "-j", str(max(jobs, 1))], log)
    t2 = time.monotonic()
    info = (build_dir / "et_build_info.txt").read_text()
    cache = (build_dir / "CMakeCache.txt").read_text()
    compiler = re.search(r"^CMAKE_CXX_COMPILER:\w+=(.*)$", cache, re.M)
    nvcc = re.search(r"^CMAKE_CUDA_COMPILER:\w+=(.*)$", cache, re.M)
    lib = build_dir / "libet.so"
    exe = build_dir / "et_infer"
    for path in (lib, exe):
        if not path.is_file():
            raise BuildError(f"the build finished but {path} is missing")
    return {
        "lib": lib, "exe": exe, "log": "\n".join(log),
        "backend": "cuda" if "cuda=ON" in info else "cpu",
        "hopper_gemm": "hopper_gemm=ON" in info,
        "cxx_compiler": _version([compiler.group(1), "--version"]) if compiler else "unknown",
        "cuda_compiler": _version([nvcc.group(1), "--version"]) if nvcc and nvcc.group(1).strip() else "none",
        "configure_s": t1 - t0, "build_s": t2 - t1,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the stage."""
    p = stage.base_parser(__doc__.splitlines()[0])
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--build-dir", type=Path, default=None, help="CMake build folder (default: inside cuda_lib/)")
    args = p.parse_args(argv)
    stage.setup_runtime(args.threads, args.seed)
    lib_cfg = args.params.get("lib", {})
    cuda = cuda_mode(lib_cfg.get("cuda", "auto"))
    build_type = lib_cfg.get("build_type", "Release")
    build_dir = args.build_dir or SOURCE_DIR / f"build-{build_type.lower()}-{cuda.lower()}"
    jobs = args.threads or os.cpu_count() or 2
    with tracking.stage_run(args.run_dir, "build_lib", args.params, tags={"et_cuda": cuda}) as run:
        print(f"build_lib: cmake -DET_CUDA={cuda} -DCMAKE_BUILD_TYPE={build_type} in {build_dir} (-j{jobs})", flush=True)
        result = cmake_build(build_dir, cuda, build_type, jobs)
        with stage.atomic_dir(args.out_dir) as tmp:
            shutil.copy2(result["lib"], tmp / "libet.so")
            shutil.copy2(result["exe"], tmp / "et_infer")
            (tmp / "build.log").write_text(result["log"])
            metrics = {"backend": result["backend"], "cxx_compiler": result["cxx_compiler"],
                       "cuda_compiler": result["cuda_compiler"] if result["backend"] == "cuda" else "not used",
                       "nvcc_found": result["cuda_compiler"], "et_cuda": cuda, "build_type": build_type,
                       "configure_s": round(result["configure_s"], 3), "build_s": round(result["build_s"], 3),
                       "cuda_built": 1.0 if result["backend"] == "cuda" else 0.0,
                       "hopper_gemm_built": 1.0 if result["hopper_gemm"] else 0.0}
            stage.write_json(tmp / stage.METRICS_FILE, metrics)
        run.log_metrics(metrics)
        run.set_tags({"built_backend": result["backend"], "cxx_compiler": result["cxx_compiler"],
                      "cuda_compiler": result["cuda_compiler"]})
        run.log_artifact(args.out_dir / "build.log")
    print(f"build_lib: {result['backend']} backend built in {result['build_s']:.1f} s -> {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
