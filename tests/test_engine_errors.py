"""Bad inference inputs and bad calls: each gets a clear status and message, never a crash."""

from __future__ import annotations

import numpy as np
import pytest

from libet_build import export, libet, random_bert  # noqa: F401
from pipeline_steps import engine as eng
from pipeline_steps.engine import Engine, EngineError

INVALID, BACKEND, UNSUPPORTED = 1, 6, 7  # et_status values of et.h


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    model = random_bert(seed=11, vocab=97, max_positions=40, type_vocab=2)
    return export(model, tmp_path_factory.mktemp("errors") / "npy")


@pytest.fixture
def engine(libet, manifest):
    with Engine(libet.lib, manifest) as e:
        yield e


def good_batch():
    return np.array([1, 2, 3, 4, 5], dtype=np.int32), np.array([2, 3], dtype=np.int32)


def test_status_values_match_header(libet):
    lib = eng.load_library(libet.lib)
    assert (lib.ET_ERR_INVALID_ARGUMENT, lib.ET_ERR_BACKEND, lib.ET_ERR_UNSUPPORTED) == (INVALID, BACKEND, UNSUPPORTED)


def expect(status: int, pattern: str, fn, *args, **kwargs) -> None:
    with pytest.raises(EngineError, match=pattern) as info:
        fn(*args, **kwargs)
    assert info.value.status == status


def test_token_id_equal_to_vocab(engine):
    tokens, lengths = good_batch()
    tokens[3] = 97
    expect(INVALID, r"token_ids\[3\] = 97 is outside 0\.\.96 \(vocab size 97\)", engine.forward, tokens, lengths)


def test_negative_token_id(engine):
    tokens, lengths = good_batch()
    tokens[0] = -1
    expect(INVALID, r"token_ids\[0\] = -1", engine.forward, tokens, lengths)


def test_length_above_max_positions(engine):
    lengths = np.array([41], dtype=np.int32)
    expect(INVALID, r"lengths\[0\] = 41 is outside 1\.\.40 \(max_positions\)", engine.forward, np.zeros(41, np.int32), lengths)


def test_zero_length_sequence(engine):
    expect(INVALID, r"lengths\[1\] = 0", engine.forward, np.zeros(3, np.int32), np.array([3, 0], np.int32))


def test_batch_zero(engine):
    expect(INVALID, r"batch = 0 \(must be >= 1\)", engine.forward, np.zeros(0, np.int32), np.zeros(0, np.int32))


def test_segment_id_outside_type_vocab(engine):
    tokens, lengths = good_batch()
    expect(INVALID, r"segment_ids\[4\] = 2 is outside 0\.\.1", engine.forward, tokens, lengths, np.array([0, 0, 1, 1, 2]))


def test_token_count_disagrees_with_lengths(engine):
    tokens, lengths = good_batch()
    expect(INVALID, r"token_ids has 4 values but lengths sum to 5", engine.forward, tokens[:4], lengths)


def test_benchmark_iters_zero(engine):
    tokens, lengths = good_batch()
    expect(INVALID, r"iters = 0", engine.benchmark, tokens, lengths, iters=0)


def test_closed_engine(engine):
    engine.close()
    engine.close()  # idempotent
    expect(INVALID, "closed", engine.forward, *good_batch())


def test_cuda_backend_missing_in_cpu_build(libet, manifest):
    expect(BACKEND, "no CUDA backend", Engine, libet.lib, manifest, backend="cuda")
    assert eng.cuda_available(libet.lib) is False


def test_fp16_precision_unsupported_on_cpu(libet, manifest):
    expect(UNSUPPORTED, "float32 only", Engine, libet.lib, manifest, backend="cpu", precision="fp16")


def test_negative_threads(libet, manifest):
    expect(INVALID, r"threads = -1", Engine, libet.lib, manifest, threads=-1)


class TestNullPointers:
    """Raw C calls through cffi with NULL arguments."""

    def call_forward(self, lib, ffi, model, lengths, tokens, logits):
        return lib.et_forward(model, 1, lengths, tokens, ffi.NULL, 0, logits, ffi.NULL)

    def test_each_null_argument(self, libet, engine):
        lib, ffi = eng.load_library(libet.lib), eng.ffi()
        lengths = ffi.new("int32_t[]", [2])
        tokens = ffi.new("int32_t[]", [1, 2])
        logits = ffi.new("float[]", 3)
        model = engine._handle()
        for args, name in [((ffi.NULL, lengths, tokens, logits), "model"), ((model, ffi.NULL, tokens, logits), "lengths"),
                           ((model, lengths, ffi.NULL, logits), "token_ids"), ((model, lengths, tokens, ffi.NULL), "logits")]:
            status = self.call_forward(lib, ffi, *args)
            assert status == INVALID
            assert ffi.string(lib.et_last_error()).decode() == f"{name} is NULL"
        assert self.call_forward(lib, ffi, model, lengths, tokens, logits) == 0
        assert ffi.string(lib.et_last_error()) == b""

    def test_load_and_info_nulls(self, libet, manifest):
        lib, ffi = eng.load_library(libet.lib), eng.ffi()
        out = ffi.new("et_model**")
        assert lib.et_model_load(ffi.NULL, ffi.NULL, ffi.NULL, out) == INVALID
        assert b"manifest_path is NULL" in ffi.string(lib.et_last_error())
        assert lib.et_model_load(str(manifest).encode(), ffi.NULL, ffi.NULL, ffi.NULL) == INVALID
        assert b"out_model is NULL" in ffi.string(lib.et_last_error())
        assert lib.et_model_get_info(ffi.NULL, ffi.new("et_model_info*")) == INVALID
        assert lib.et_model_free(ffi.NULL) == 0
        assert ffi.string(lib.et_backend_name(ffi.NULL)) == b""
        assert ffi.string(lib.et_device_name(ffi.NULL)) == b""
        assert ffi.string(lib.et_status_string(4)) == b"shape mismatch"

    def test_null_options_mean_defaults(self, libet, manifest):
        lib, ffi = eng.load_library(libet.lib), eng.ffi()
        out = ffi.new("et_model**")
        assert lib.et_model_load(str(manifest).encode(), ffi.NULL, ffi.NULL, out) == 0
        assert ffi.string(lib.et_backend_name(out[0])) == b"cpu"
        assert lib.et_model_free(out[0]) == 0


def test_engine_usable_after_errors(engine):
    """Errors leave the model intact: a good call afterwards gives the same logits as before."""
    tokens, lengths = good_batch()
    before = engine.forward(tokens, lengths)
    bad = tokens.copy()
    bad[0] = 10**6
    with pytest.raises(EngineError):
        engine.forward(bad, lengths)
    np.testing.assert_array_equal(engine.forward(tokens, lengths), before)
