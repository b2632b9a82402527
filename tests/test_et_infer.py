"""The et_infer executable: its logits equal the library's on the same inputs; timing output;
bad input gives a message and a non-zero exit."""

from __future__ import annotations

import re
import subprocess

import numpy as np
import pytest

from libet_build import apply_masks, export, libet, ragged_batch, random_bert, random_masks  # noqa: F401
from pipeline_steps.engine import Engine


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    model = random_bert(seed=41, vocab=97, max_positions=40)
    masks = random_masks(model, seed=41)
    apply_masks(model, masks)
    return export(model, tmp_path_factory.mktemp("et_infer") / "npy", masks)


def run(libet, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(libet.exe), *map(str, args)], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("chunk", [None, 2], ids=["one-pass", "chunks-of-2"])
def test_logits_equal_library(libet, manifest, tmp_path, chunk):
    tokens, segments, lengths = ragged_batch(np.random.default_rng(0), [1, 40, 13, 7, 22], 97)
    np.save(tmp_path / "tokens.npy", tokens)
    np.save(tmp_path / "segments.npy", segments.astype(np.int64))  # int64 files are accepted too
    np.save(tmp_path / "lengths.npy", lengths)
    extra = ["--chunk", str(chunk)] if chunk else []
    proc = run(libet, manifest, manifest.parent, "--tokens", tmp_path / "tokens.npy", "--lengths",
               tmp_path / "lengths.npy", "--segments", tmp_path / "segments.npy", "--iters", "3", "--warmup", "1",
               "--out", tmp_path / "logits.npy", *extra)
    assert proc.returncode == 0, proc.stderr
    assert "backend: cpu" in proc.stdout
    assert re.search(r"latency_ms: min=[\d.]+ median=[\d.]+ p90=[\d.]+", proc.stdout)
    with Engine(libet.lib, manifest) as engine:
        expected = engine.forward(tokens, lengths, segments)
    np.testing.assert_array_equal(np.load(tmp_path / "logits.npy"), expected)


def test_padded_token_matrix(libet, manifest, tmp_path):
    """2-D [batch, seq] token files, cut to --lengths, and --padded give the library's logits."""
    tokens = np.random.default_rng(1).integers(0, 97, size=(3, 10)).astype(np.int32)
    lengths = np.array([10, 4, 7], dtype=np.int32)
    np.save(tmp_path / "tokens.npy", tokens)
    np.save(tmp_path / "lengths.npy", lengths)
    proc = run(libet, manifest, manifest.parent, "--tokens", tmp_path / "tokens.npy", "--lengths",
               tmp_path / "lengths.npy", "--padded", "--iters", "0", "--out", tmp_path / "logits.npy")
    assert proc.returncode == 0, proc.stderr
    packed = np.concatenate([tokens[b, :n] for b, n in enumerate(lengths)])
    with Engine(libet.lib, manifest) as engine:
        expected = engine.forward(packed, lengths)
    np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), expected, rtol=0, atol=1e-6)


def test_random_tokens_timing(libet, manifest):
    proc = run(libet, manifest, manifest.parent, "--batch", "4", "--seq", "16", "--iters", "5", "--warmup", "1")
    assert proc.returncode == 0, proc.stderr
    assert "batch: 4 sequences, 64 tokens, random tokens" in proc.stdout
    assert re.search(r"tokens_per_s: [\d.]+", proc.stdout)


@pytest.mark.parametrize("args, pattern, code", [
    (["--backend", "tpu"], "--backend must be cpu, cuda or auto", 2),
    (["--iters", "x"], "--iters expects an integer", 2),
    (["--bogus"], "unknown option --bogus", 2),
    (["--backend", "cuda"], "no CUDA backend", 1),
    (["--seq", "41"], r"lengths\[0\] = 41 is outside 1\.\.40", 1),
], ids=["bad-backend", "bad-int", "unknown-option", "no-cuda", "too-long"])
def test_bad_arguments(libet, manifest, args, pattern, code):
    proc = run(libet, manifest, manifest.parent, *args)
    assert proc.returncode == code
    assert re.search(pattern, proc.stderr), proc.stderr


def test_missing_manifest(libet, tmp_path):
    proc = run(libet, tmp_path / "weights.txt", tmp_path)
    assert proc.returncode == 1
    assert "cannot open manifest" in proc.stderr


def test_token_file_errors(libet, manifest, tmp_path):
    np.save(tmp_path / "tokens.npy", np.array([1, 2, 97], dtype=np.int32))
    np.save(tmp_path / "lengths.npy", np.array([3], dtype=np.int32))
    proc = run(libet, manifest, manifest.parent, "--tokens", tmp_path / "tokens.npy", "--lengths",
               tmp_path / "lengths.npy")
    assert proc.returncode == 1 and "token_ids[2] = 97 is outside 0..96" in proc.stderr
    np.save(tmp_path / "lengths.npy", np.array([4, -1], dtype=np.int32))
    proc = run(libet, manifest, manifest.parent, "--tokens", tmp_path / "tokens.npy", "--lengths",
               tmp_path / "lengths.npy")
    assert proc.returncode == 1 and "lengths[1] = -1 (must be >= 1)" in proc.stderr
    np.save(tmp_path / "tokens.npy", np.array([1.0, 2.0, 3.0], dtype=np.float32))
    proc = run(libet, manifest, manifest.parent, "--tokens", tmp_path / "tokens.npy", "--lengths",
               tmp_path / "lengths.npy")
    assert proc.returncode == 1 and "expected <i4 or <i8" in proc.stderr
