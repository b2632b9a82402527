"""The build_lib stage and the CMake options of cuda_lib/."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from libet_build import BUILD_DIR
from pipeline_steps import build_lib


@pytest.mark.parametrize("value, expected", [("auto", "AUTO"), ("on", "ON"), ("off", "OFF"), (True, "ON"),
                                             (False, "OFF")])
def test_cuda_mode(value, expected):
    assert build_lib.cuda_mode(value) == expected


def test_cuda_mode_rejects_other_values():
    with pytest.raises(ValueError, match="lib.cuda must be auto, on or off"):
        build_lib.cuda_mode("sometimes")


def test_stage_builds_and_copies(tmp_path, mlflow_uri):
    params = {"lib": {"cuda": False, "build_type": "Release"}}
    out = tmp_path / "build_lib"
    assert build_lib.main(["--params", json.dumps(params), "--threads", "2", "--build-dir", str(BUILD_DIR),
                           "--out-dir", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["backend"] == "cpu" and metrics["et_cuda"] == "OFF"
    assert "g++" in metrics["cxx_compiler"] or "clang" in metrics["cxx_compiler"] or "c++" in metrics["cxx_compiler"]
    assert metrics["build_s"] >= 0
    # the copied executable finds the copied library next to it
    proc = subprocess.run([str(out / "et_infer"), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "usage: et_infer" in proc.stdout
    exported = subprocess.run(["nm", "-D", "--defined-only", str(out / "libet.so")], capture_output=True, text=True)
    if exported.returncode == 0:
        symbols = {ln.split()[-1] for ln in exported.stdout.splitlines() if ln.strip()}
        assert symbols and all(s.startswith("et_") for s in symbols), sorted(symbols)[:10]


def test_invalid_et_cuda_value(tmp_path):
    with pytest.raises(build_lib.BuildError, match="ET_CUDA must be ON, OFF or AUTO, not 'MAYBE'"):
        build_lib.cmake_build(tmp_path / "b", cuda="MAYBE")


def test_cuda_on_without_nvcc_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", os.pathsep.join([str(Path(sys.executable).parent), "/usr/bin", "/bin"]))
    monkeypatch.delenv("CUDACXX", raising=False)
    with pytest.raises(build_lib.BuildError, match="ET_CUDA=ON but no CUDA compiler"):
        build_lib.cmake_build(tmp_path / "b", cuda="ON")


def test_find_cublas_root_in_a_wheel_layout(tmp_path):
    site = tmp_path / "site-packages"
    root = site / "nvidia" / "cublas"
    (root / "include").mkdir(parents=True)
    (root / "lib").mkdir()
    assert build_lib.find_cublas_root([site]) is None
    (root / "include" / "cublasLt.h").write_text("")
    assert build_lib.find_cublas_root([site]) is None  # a header without the library is not enough
    (root / "lib" / "libcublasLt.so.12").write_text("")
    assert build_lib.find_cublas_root([site]) == root
    assert build_lib.find_cublas_root([tmp_path / "elsewhere"]) is None
