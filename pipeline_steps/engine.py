"""The cffi binding of libet (``cuda_lib/include/et.h``), in ABI mode: no compiler needed at import.

``ffi.cdef`` is fed the declarations of the public header itself (preprocessor lines dropped, its
integer ``#define`` constants read separately), and ``ffi.dlopen`` opens the built ``libet.so``.
NumPy inputs and outputs are handed to the library with ``ffi.from_buffer`` (no copies when the
arrays already are contiguous int32/float32). Every non-OK status becomes an :class:`EngineError`
carrying the library's message; :class:`Engine` frees its model deterministically on ``close()`` or
at the end of a ``with`` block.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np
from cffi import FFI

HEADER = Path(__file__).resolve().parent.parent / "cuda_lib" / "include" / "et.h"

BACKENDS = {"auto": 0, "cpu": 1, "cuda": 2}
PRECISIONS = {"default": 0, "fp32": 1, "fp16": 2, "bf16": 3}


class EngineError(RuntimeError):
    """A libet call failed; ``status`` is the et_status code, the message is the library's."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def header_declarations(text: str) -> tuple[str, dict[str, int]]:
    """The C declarations of ``et.h`` for ``ffi.cdef`` and its integer ``#define`` constants."""
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    constants: dict[str, int] = {}
    lines: list[str] = []
    skip_depth = 0
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            directive = stripped[1:].strip()
            if directive.startswith("ifdef __cplusplus"):
                skip_depth += 1
            elif directive.startswith("endif") and skip_depth:
                skip_depth -= 1
            else:
                m = re.match(r"define\s+(\w+)\s+\(?(\d+)[uUlL]*\)?\s*$", directive)
                if m:
                    constants[m.group(1)] = int(m.group(2))
            continue
        if not skip_depth:
            lines.append(line)
    return "\n".join(lines), constants


_ffi = FFI()
_CDEF, CONSTANTS = header_declarations(HEADER.read_text())
_ffi.cdef(_CDEF)
_libs: dict[str, Any] = {}
_libs_lock = threading.Lock()
# OpenMP threads that spin at barriers starve the thread they wait for when the machine has more
# runnable threads than cores (a shared CI box, parallel Snakemake jobs): a forward pass on 2 threads
# was measured 7-20x slower with spinning than with sleeping waits. Read by libgomp when libet is
# first loaded in the process (torch shares the same libgomp when it was imported earlier, so the
# setting is made at import of this module); an explicit setting in the environment wins.
OMP_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}
for _name, _value in OMP_ENV.items():
    os.environ.setdefault(_name, _value)


def ffi() -> FFI:
    """The module's FFI object (types of et.h)."""
    return _ffi


def load_library(lib_path: str | Path) -> Any:
    """``ffi.dlopen`` of a built libet (cached per resolved path)."""
    path = Path(lib_path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: libet shared library not found (run the build_lib stage)")
    key = str(path)
    with _libs_lock:
        if key not in _libs:
            _libs[key] = _ffi.dlopen(key)
        return _libs[key]


def cuda_available(lib_path: str | Path) -> bool:
    """True when this libet build has the CUDA backend and a CUDA device is visible."""
    return bool(load_library(lib_path).et_cuda_available())


def _check(lib: Any, status: int) -> None:
    if status != 0:
        name = _ffi.string(lib.et_status_string(status)).decode()
        message = _ffi.string(lib.et_last_error()).decode(errors="replace")
        raise EngineError(status, f"{name}: {message}")


def _int32_vector(name: str, values: Any) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise EngineError(1, f"invalid argument: {name} must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise EngineError(1, f"invalid argument: {name} must hold integers, got {arr.dtype}")
    if arr.dtype != np.int32 and arr.size:
        info = np.iinfo(np.int32)
        if arr.min() < info.min or arr.max() > info.max:
            raise EngineError(1, f"invalid argument: {name} has values outside int32")
    return np.ascontiguousarray(arr, dtype=np.int32)


class Engine:
    """A model loaded into libet; use as a context manager (or call ``close()``)."""

    def __init__(self, lib_path: str | Path, manifest: str | Path, npy_dir: str | Path | None = None,
                 backend: str = "auto", device: int = 0, precision: str = "default", threads: int = 0) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {sorted(BACKENDS)}, got {backend!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        self._lib = load_library(lib_path)
        self._model = _ffi.NULL
        opts = _ffi.new("et_options*")
        self._lib.et_options_default(opts)
        opts.backend = BACKENDS[backend]
        opts.device = int(device)
        opts.precision = PRECISIONS[precision]
        opts.threads = int(threads)
        out = _ffi.new("et_model**")
        npy = str(npy_dir).encode() if npy_dir is not None else _ffi.NULL
        _check(self._lib, self._lib.et_model_load(str(manifest).encode(), npy, opts, out))
        self._model = out[0]
        info = _ffi.new("et_model_info*")
        _check(self._lib, self._lib.et_model_get_info(self._model, info))
        self.info: dict[str, int] = {name: int(getattr(info, name)) for name, _ in _ffi.typeof("et_model_info").fields}
        self.backend: str = _ffi.string(self._lib.et_backend_name(self._model)).decode()
        self.device: str = _ffi.string(self._lib.et_device_name(self._model)).decode(errors="replace")

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - never raise from a finaliser (e.g. at interpreter shutdown)
            pass

    def close(self) -> None:
        """Free the model (idempotent)."""
        model = getattr(self, "_model", _ffi.NULL)
        if model != _ffi.NULL:
            self._model = _ffi.NULL
            _check(self._lib, self._lib.et_model_free(model))

    def _handle(self) -> Any:
        if self._model == _ffi.NULL:
            raise EngineError(1, "invalid argument: the engine is closed")
        return self._model

    def _inputs(self, token_ids: Any, lengths: Any, segment_ids: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        lengths = _int32_vector("lengths", lengths)
        token_ids = _int32_vector("token_ids", token_ids)
        total = int(lengths.astype(np.int64).sum()) if lengths.size else 0
        if token_ids.size != total:
            raise EngineError(1, f"invalid argument: token_ids has {token_ids.size} values but lengths sum to {total}")
        if segment_ids is not None:
            segment_ids = _int32_vector("segment_ids", segment_ids)
            if segment_ids.size != total:
                raise EngineError(1, f"invalid argument: segment_ids has {segment_ids.size} values but lengths sum to {total}")
        return token_ids, lengths, segment_ids

    @staticmethod
    def _ptr(arr: np.ndarray | None, ctype: str) -> Any:
        if arr is None:
            return _ffi.NULL
        return _ffi.from_buffer(ctype, arr, require_writable=False)

    def forward(self, token_ids: Any, lengths: Any, segment_ids: Any = None, padded: bool = False,
                return_hidden: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Logits ``[batch, labels]`` of a packed ragged batch (and the last hidden states ``[tokens, hidden]``)."""
        model = self._handle()
        token_ids, lengths, segment_ids = self._inputs(token_ids, lengths, segment_ids)
        logits = np.empty((lengths.size, self.info["labels"]), dtype=np.float32)
        hidden = np.empty((token_ids.size, self.info["hidden"]), dtype=np.float32) if return_hidden else None
        flags = CONSTANTS["ET_FORWARD_PADDED"] if padded else 0
        _check(self._lib, self._lib.et_forward(
            model, lengths.size, self._ptr(lengths, "int32_t[]"), self._ptr(token_ids, "int32_t[]"),
            self._ptr(segment_ids, "int32_t[]"), flags, _ffi.from_buffer("float[]", logits),
            self._ptr(hidden, "float[]")))
        return (logits, hidden) if return_hidden else logits

    def benchmark(self, token_ids: Any, lengths: Any, segment_ids: Any = None, padded: bool = False,
                  warmup: int = 10, iters: int = 50, graph: bool = True) -> np.ndarray:
        """Milliseconds of each of ``iters`` timed forward passes (after ``warmup`` untimed ones)."""
        model = self._handle()
        token_ids, lengths, segment_ids = self._inputs(token_ids, lengths, segment_ids)
        ms = np.empty(max(int(iters), 0), dtype=np.float32)
        flags = (CONSTANTS["ET_FORWARD_PADDED"] if padded else 0) | (0 if graph else CONSTANTS["ET_FORWARD_NO_GRAPH"])
        _check(self._lib, self._lib.et_benchmark(
            model, lengths.size, self._ptr(lengths, "int32_t[]"), self._ptr(token_ids, "int32_t[]"),
            self._ptr(segment_ids, "int32_t[]"), flags, int(warmup), int(iters),
            _ffi.from_buffer("float[]", ms) if ms.size else _ffi.NULL))
        return ms
