"""The C++ .npy reader, through et_model_load: every malformed file is rejected with a status and a
message naming the file; valid variants (format 2.0, f16) load."""

from __future__ import annotations

import shutil
import struct

import numpy as np
import pytest

from libet_build import export, libet, random_bert  # noqa: F401
from pipeline_steps.engine import Engine, EngineError

IO, FORMAT, SHAPE = 2, 3, 4
WORD = "bert.embeddings.word_embeddings.weight"  # f32 [97, 64]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return export(random_bert(seed=21, vocab=97, hidden=64), tmp_path_factory.mktemp("npy_ref") / "npy").parent.parent


@pytest.fixture
def model_dir(reference, tmp_path):
    return shutil.copytree(reference, tmp_path / "m")


def header_bytes(descr: str, shape: tuple, fortran: bool = False, version: int = 1) -> bytes:
    d = f"{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}"
    d += " " * ((64 - (len(d) + 11) % 64) % 64) + "\n"
    if version == 1:
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(d)) + d.encode()
    return b"\x93NUMPY" + bytes([version, 0]) + struct.pack("<I", len(d)) + d.encode()


def load_error(libet, model_dir, status: int, pattern: str) -> None:
    with pytest.raises(EngineError, match=pattern) as info:
        Engine(libet.lib, model_dir / "npy" / "weights.txt")
    assert info.value.status == status


def word_file(model_dir):
    return model_dir / "npy" / f"{WORD}.npy"


def test_missing_file(libet, model_dir):
    word_file(model_dir).unlink()
    load_error(libet, model_dir, IO, rf"{WORD}\.npy: cannot open \.npy file")


def test_truncated_data(libet, model_dir):
    data = word_file(model_dir).read_bytes()
    word_file(model_dir).write_bytes(data[:-10])
    load_error(libet, model_dir, FORMAT, rf"{WORD}\.npy: truncated \.npy file: \d+ bytes, expected \d+ for <f4 \[97,64\]")


def test_truncated_header(libet, model_dir):
    word_file(model_dir).write_bytes(word_file(model_dir).read_bytes()[:40])
    load_error(libet, model_dir, FORMAT, "truncated .npy file: header of")


def test_empty_file(libet, model_dir):
    word_file(model_dir).write_bytes(b"")
    load_error(libet, model_dir, FORMAT, "truncated .npy file: 0 bytes")


def test_trailing_bytes(libet, model_dir):
    with word_file(model_dir).open("ab") as fh:
        fh.write(b"\0" * 4)
    load_error(libet, model_dir, FORMAT, "trailing bytes in .npy file")


def test_unsupported_dtype_float64(libet, model_dir):
    np.save(word_file(model_dir), np.zeros((97, 64), dtype=np.float64))
    load_error(libet, model_dir, FORMAT, r"unsupported dtype '<f8' \(expected <f4, <f2, <i4 or <i8\)")


def test_dtype_disagrees_with_manifest(libet, model_dir):
    np.save(word_file(model_dir), np.zeros((97, 64), dtype=np.float16))
    load_error(libet, model_dir, SHAPE, rf"dtype <f2 but the manifest declares <f4 for '{WORD}'")


def test_integer_array_for_a_weight(libet, model_dir):
    np.save(word_file(model_dir), np.zeros((97, 64), dtype=np.int32))
    load_error(libet, model_dir, SHAPE, "dtype <i4 but the manifest declares <f4")


def test_shape_disagrees_with_manifest(libet, model_dir):
    np.save(word_file(model_dir), np.zeros((64, 97), dtype=np.float32))
    load_error(libet, model_dir, SHAPE, rf"shape \[64,97\] but the manifest declares \[97,64\] for '{WORD}'")


def test_bad_magic(libet, model_dir):
    data = bytearray(word_file(model_dir).read_bytes())
    data[1:6] = b"NUMPZ"
    word_file(model_dir).write_bytes(bytes(data))
    load_error(libet, model_dir, FORMAT, "not a .npy file")


def test_unknown_version(libet, model_dir):
    data = bytearray(word_file(model_dir).read_bytes())
    data[6] = 9
    word_file(model_dir).write_bytes(bytes(data))
    load_error(libet, model_dir, FORMAT, r"unsupported \.npy format version 9\.0")


def test_fortran_order(libet, model_dir):
    np.save(word_file(model_dir), np.asfortranarray(np.zeros((97, 64), dtype=np.float32)))
    load_error(libet, model_dir, FORMAT, "Fortran-order arrays are not supported")


def test_big_endian(libet, model_dir):
    np.save(word_file(model_dir), np.zeros((97, 64), dtype=">f4"))
    load_error(libet, model_dir, FORMAT, "unsupported dtype '>f4'")


@pytest.mark.parametrize("header", [
    "{'descr': '<f4', 'fortran_order': False, 'shap': (97, 64), }",
    "{'descr': '<f4', 'fortran_order': False}",
    "{'descr': '<f4', 'fortran_order': Maybe, 'shape': (97, 64), }",
    "{'descr': '<f4', 'fortran_order': False, 'shape': (97, -64), }",
    "{'descr': '<f4', 'fortran_order': False, 'shape': (97, 64), } junk",
    "['<f4', False, (97, 64)]",
], ids=["unknown-key", "no-shape", "bad-bool", "negative-dim", "trailing-junk", "not-a-dict"])
def test_malformed_header(libet, model_dir, header):
    body = np.zeros((97, 64), dtype=np.float32).tobytes()
    h = header + "\n"
    word_file(model_dir).write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h.encode() + body)
    load_error(libet, model_dir, FORMAT, "malformed .npy header")


def test_header_length_beyond_file(libet, model_dir):
    data = bytearray(word_file(model_dir).read_bytes())
    data[8:10] = struct.pack("<H", 65535)
    word_file(model_dir).write_bytes(bytes(data[:2000]))
    load_error(libet, model_dir, FORMAT, "runs past the end of the file")


def test_implausible_shape(libet, model_dir):
    word_file(model_dir).write_bytes(header_bytes("<f4", (2**40, 2**40)))
    load_error(libet, model_dir, FORMAT, "implausibly large")


def test_nan_weight(libet, model_dir):
    w = np.load(word_file(model_dir))
    w[5, 7] = np.nan
    np.save(word_file(model_dir), w)
    load_error(libet, model_dir, FORMAT, rf"non-finite value at flat index {5 * 64 + 7} of '{WORD}'")


@pytest.mark.parametrize("version", [2, 3])
def test_format_versions_2_and_3_load(libet, model_dir, version):
    w = np.load(word_file(model_dir))
    word_file(model_dir).write_bytes(header_bytes("<f4", w.shape, version=version) + w.tobytes())
    with Engine(libet.lib, model_dir / "npy" / "weights.txt") as engine:
        assert engine.info["vocab"] == 97


def test_garbage_never_crashes(libet, model_dir):
    """Random byte flips in the header region: always a status, never a crash."""
    original = word_file(model_dir).read_bytes()
    rng = np.random.default_rng(0)
    for _ in range(60):
        data = bytearray(original)
        for pos in rng.integers(0, 128, size=3):
            data[pos] = int(rng.integers(0, 256))
        word_file(model_dir).write_bytes(bytes(data))
        try:
            Engine(libet.lib, model_dir / "npy" / "weights.txt").close()
        except EngineError as exc:
            assert str(exc)
