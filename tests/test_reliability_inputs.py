"""Bad inference inputs get INVALID_ARGUMENT and a message naming the argument, index and bound,
from forward, benchmark, the raw C API and the et_infer executable; the engine stays usable."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipeline_steps import engine
from pipeline_steps.engine import Engine, EngineError
from reliability_model import TINY, libet, tiny_export  # noqa: F401

INVALID = 1
I32 = np.int32
VOCAB, MAX_POS = TINY["vocab"], TINY["max_positions"]

# case -> (token_ids, lengths, segment_ids, text the message must contain)
CASES = {
    "token_equal_vocab": ([1, VOCAB, 2], [3], None, f"token_ids[1] = {VOCAB} is outside 0..{VOCAB - 1} (vocab size {VOCAB})"),
    "token_far_above_vocab": ([1, 2, 10**6], [3], None, "token_ids[2] = 1000000 is outside"),
    "token_negative": ([1, -1, 2], [3], None, "token_ids[1] = -1 is outside"),
    "length_above_max_positions": ([1] * (MAX_POS + 1), [MAX_POS + 1], None,
                                   f"lengths[0] = {MAX_POS + 1} is outside 1..{MAX_POS} (max_positions)"),
    "zero_length_sequence": ([1, 2, 3], [3, 0], None, "lengths[1] = 0 is outside 1.."),
    "negative_length": ([1, 2, 3], [4, -1], None, "lengths[1] = -1 is outside"),
    "batch_zero": ([], [], None, "batch = 0 (must be >= 1)"),
    "segment_above_type_vocab": ([1, 2, 3], [3], [0, 2, 0], "segment_ids[1] = 2 is outside 0..1"),
    "tokens_vs_lengths": ([1, 2, 3, 4], [3], None, "token_ids has 4 values but lengths sum to 3"),
    "segments_vs_lengths": ([1, 2, 3], [3], [0, 0], "segment_ids has 2 values but lengths sum to 3"),
    "tokens_not_integers": (np.ones(3, np.float32), [3], None, "token_ids must hold integers, got float32"),
    "tokens_2d": (np.ones((1, 3), I32), [3], None, "token_ids must be 1-D, got shape (1, 3)"),
    "tokens_beyond_int32": (np.array([1, 2**40, 2]), [3], None, "token_ids has values outside int32"),
}


@pytest.fixture(scope="module")
def eng(libet, tiny_export):
    """One CPU engine on the tiny model, shared by the module's tests."""
    with Engine(libet.lib, tiny_export / "weights.txt", backend="cpu") as e:
        yield e


def _good_forward(e: Engine) -> np.ndarray:
    return e.forward(np.array([1, 2, 3, 4], I32), np.array([3, 1], I32))


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_named_and_engine_survives(case: str, eng: Engine) -> None:
    """forward and benchmark both refuse the input with INVALID_ARGUMENT and the same message; a
    valid batch afterwards gives the same logits as before."""
    tokens, lengths, segments, text = CASES[case]
    before = _good_forward(eng)
    for call in (lambda: eng.forward(tokens, lengths, segments),
                 lambda: eng.benchmark(tokens, lengths, segments, warmup=0, iters=1)):
        with pytest.raises(EngineError) as err:
            call()
        assert err.value.status == INVALID
        assert text in str(err.value), str(err.value)
    np.testing.assert_array_equal(_good_forward(eng), before)


def test_null_pointers_through_the_c_api(libet, tiny_export, eng: Engine) -> None:
    """The raw C API refuses NULL where a pointer is required, with a status and a message."""
    ffi, lib = engine.ffi(), engine.load_library(libet.lib)
    out = ffi.new("et_model**")
    assert lib.et_model_load(ffi.NULL, ffi.NULL, ffi.NULL, out) == INVALID
    assert ffi.string(lib.et_last_error())
    assert lib.et_model_load(str(tiny_export / "weights.txt").encode(), ffi.NULL, ffi.NULL, ffi.NULL) == INVALID
    info = ffi.new("et_model_info*")
    assert lib.et_model_get_info(ffi.NULL, info) == INVALID
    lengths = np.array([2], I32)
    tokens = np.array([1, 2], I32)
    logits = np.zeros(2, np.float32)
    model = eng._handle()
    ptr = lambda a, t: ffi.from_buffer(t, a)  # noqa: E731
    assert lib.et_forward(model, 1, ffi.NULL, ptr(tokens, "int32_t[]"), ffi.NULL, 0, ptr(logits, "float[]"), ffi.NULL) == INVALID
    assert lib.et_forward(model, 1, ptr(lengths, "int32_t[]"), ffi.NULL, ffi.NULL, 0, ptr(logits, "float[]"), ffi.NULL) == INVALID
    assert lib.et_forward(model, 1, ptr(lengths, "int32_t[]"), ptr(tokens, "int32_t[]"), ffi.NULL, 0, ffi.NULL, ffi.NULL) == INVALID
    assert lib.et_forward(ffi.NULL, 1, ptr(lengths, "int32_t[]"), ptr(tokens, "int32_t[]"), ffi.NULL, 0,
                          ptr(logits, "float[]"), ffi.NULL) == INVALID
    assert "null" in ffi.string(lib.et_last_error()).decode().lower()
    assert lib.et_model_free(ffi.NULL) == 0


def test_closed_engine_refuses_calls(libet, tiny_export) -> None:
    """A closed engine raises instead of touching freed memory."""
    e = Engine(libet.lib, tiny_export / "weights.txt", backend="cpu")
    e.close()
    e.close()  # idempotent
    with pytest.raises(EngineError, match="the engine is closed"):
        _good_forward(e)


def test_et_infer_refuses_bad_tokens_and_writes_no_logits(tmp_path: Path, libet, tiny_export) -> None:
    """The executable exits non-zero with the library's message and leaves no --out file."""
    np.save(tmp_path / "tokens.npy", np.array([1, VOCAB + 3, 2], I32))
    np.save(tmp_path / "lengths.npy", np.array([3], I32))
    out = tmp_path / "logits.npy"
    proc = subprocess.run([str(libet.exe), str(tiny_export / "weights.txt"), str(tiny_export), "--backend", "cpu",
                           "--tokens", str(tmp_path / "tokens.npy"), "--lengths", str(tmp_path / "lengths.npy"),
                           "--out", str(out)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert f"token_ids[1] = {VOCAB + 3} is outside 0..{VOCAB - 1}" in proc.stderr
    assert not out.exists()
