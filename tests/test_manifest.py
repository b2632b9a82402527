"""The weights.txt parser and loader: every malformed or inconsistent manifest is rejected with a
status and a message naming the line, tensor or file."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from libet_build import apply_masks, export, libet, random_bert, random_masks  # noqa: F401
from pipeline_steps.engine import Engine, EngineError

IO, FORMAT, SHAPE = 2, 3, 4
Q0 = "bert.encoder.layer.0.attention.self.query.weight"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    model = random_bert(seed=31, vocab=97, hidden=64, heads=4, layers=2)
    masks = random_masks(model, seed=31, tile=(16, 16), density=0.5)
    masks.pruned_heads = {1: [2]}
    apply_masks(model, masks)
    return export(model, tmp_path_factory.mktemp("manifest_ref") / "npy", masks).parent.parent


@pytest.fixture
def npy(reference, tmp_path):
    return shutil.copytree(reference, tmp_path / "m") / "npy"


def edit(npy, fn) -> None:
    path = npy / "weights.txt"
    path.write_text("\n".join(fn(path.read_text().splitlines())) + "\n")


def replace(old: str, new: str):
    def fn(lines):
        assert any(old in ln for ln in lines), old
        return [ln.replace(old, new) for ln in lines]
    return fn


def load_error(libet, npy, status: int, pattern: str) -> None:
    with pytest.raises(EngineError, match=pattern) as info:
        Engine(libet.lib, npy / "weights.txt")
    assert info.value.status == status


def test_reference_loads_from_its_folder_and_elsewhere(libet, npy, tmp_path):
    with Engine(libet.lib, npy / "weights.txt") as a:
        assert a.info["pruned_heads"] == 1
    moved = tmp_path / "manifest_only"
    moved.mkdir()
    shutil.copy(npy / "weights.txt", moved / "weights.txt")
    with Engine(libet.lib, moved / "weights.txt", npy_dir=npy) as b:
        assert b.info == a.info


def test_missing_manifest(libet, tmp_path):
    with pytest.raises(EngineError, match="cannot open manifest") as info:
        Engine(libet.lib, tmp_path / "nope.txt")
    assert info.value.status == IO


@pytest.mark.parametrize("name", ["../outside.npy", "/etc/passwd", "sub/x.npy", ".hidden.npy", "..", "a\\b.npy"],
                         ids=["dotdot", "absolute", "subfolder", "hidden", "parent", "backslash"])
def test_path_outside_folder(libet, npy, name):
    word = "bert.embeddings.word_embeddings.weight"
    edit(npy, replace(f"{word}.npy", name))
    load_error(libet, npy, FORMAT, r"is not a plain file name inside the manifest's folder")


def test_unknown_record(libet, npy):
    edit(npy, lambda lines: lines + ["weights foo bar"])
    load_error(libet, npy, FORMAT, r"weights.txt:\d+: unknown record 'weights'")


def test_missing_config_key(libet, npy):
    edit(npy, lambda lines: [ln for ln in lines if not ln.startswith("config vocab ")])
    load_error(libet, npy, FORMAT, "missing config key 'vocab'")


def test_unknown_config_key(libet, npy):
    edit(npy, lambda lines: lines + ["config dropout 0.1"])
    load_error(libet, npy, FORMAT, "unknown config key 'dropout'")


def test_duplicate_config_key(libet, npy):
    edit(npy, lambda lines: lines + ["config layers 2"])
    load_error(libet, npy, FORMAT, "duplicate config key 'layers'")


def test_bad_config_value(libet, npy):
    edit(npy, replace("config heads 4", "config heads four"))
    load_error(libet, npy, FORMAT, "config heads = 'four' is not an integer")


def test_unsupported_activation(libet, npy):
    edit(npy, replace("config activation gelu", "config activation relu"))
    load_error(libet, npy, FORMAT, "only 'gelu' is supported")


def test_first_record_not_version(libet, npy):
    edit(npy, lambda lines: lines[1:])
    load_error(libet, npy, FORMAT, "the first record must be 'et-weights 1'")


def test_unsupported_version(libet, npy):
    edit(npy, replace("et-weights 1", "et-weights 2"))
    load_error(libet, npy, FORMAT, "unsupported manifest version '2'")


def test_duplicate_tensor(libet, npy):
    edit(npy, lambda lines: lines + [next(ln for ln in lines if ln.startswith("tensor "))])
    load_error(libet, npy, FORMAT, "duplicate tensor 'bert.embeddings.word_embeddings.weight'")


def test_missing_tensor(libet, npy):
    edit(npy, lambda lines: [ln for ln in lines if "bert.pooler.dense.weight" not in ln])
    load_error(libet, npy, FORMAT, r"missing tensor 'bert.pooler.dense.weight' \(expected shape \[64,64\]\)")


def test_unknown_tensor(libet, npy):
    edit(npy, lambda lines: lines + ["tensor bert.extra.weight f32 64 bert.pooler.dense.bias.npy"])
    load_error(libet, npy, FORMAT, "unknown tensor 'bert.extra.weight'")


def test_manifest_shape_disagrees_with_config(libet, npy):
    edit(npy, replace("config vocab 97", "config vocab 98"))
    load_error(libet, npy, SHAPE, r"'bert.embeddings.word_embeddings.weight' has shape \[97,64\] but the config "
                                  r"implies \[98,64\]")


def test_malformed_shape(libet, npy):
    edit(npy, replace("f32 97,64 ", "f32 97;64 "))
    load_error(libet, npy, FORMAT, "malformed shape '97;64'")


def test_unsupported_manifest_dtype(libet, npy):
    edit(npy, replace("f32 97,64 ", "f64 97,64 "))
    load_error(libet, npy, FORMAT, "unsupported dtype 'f64'")


def test_tile_not_dividing(libet, npy):
    edit(npy, replace(f"tiled {Q0} f32 64,64 16x16", f"tiled {Q0} f32 64,64 24x16"))
    load_error(libet, npy, FORMAT, f"tile shape 24x16 does not divide the shape 64,64 of '{Q0}'")


def test_tile_ids_not_ascending(libet, npy):
    idx = np.load(npy / f"{Q0}.index.npy")
    np.save(npy / f"{Q0}.index.npy", idx[::-1].copy())
    load_error(libet, npy, SHAPE, f"tile ids of '{Q0}' are not strictly ascending")


def test_tile_id_out_of_range(libet, npy):
    idx = np.load(npy / f"{Q0}.index.npy")
    idx[-1] = 16
    np.save(npy / f"{Q0}.index.npy", idx)
    load_error(libet, npy, SHAPE, r"tile id 16 at position \d+ is outside \[0, 16\)")


def test_tile_index_wrong_dtype(libet, npy):
    np.save(npy / f"{Q0}.index.npy", np.load(npy / f"{Q0}.index.npy").astype(np.int64))
    load_error(libet, npy, SHAPE, "must be <i4 1-D, got <i8")


def test_tile_data_disagrees_with_index(libet, npy):
    data = np.load(npy / f"{Q0}.tiles.npy")
    np.save(npy / f"{Q0}.tiles.npy", data[:-1].copy())
    load_error(libet, npy, SHAPE, rf"\.tiles\.npy: shape \[{len(data) - 1},16,16\] but the manifest declares "
                                  rf"\[{len(data)},16,16\]")


def test_tiled_embedding_rejected(libet, npy):
    word = "bert.embeddings.word_embeddings.weight"
    edit(npy, replace(f"tensor {word} f32 97,64 {word}.npy",
                      f"tiled {word} f32 97,64 97x16 {Q0}.tiles.npy {Q0}.index.npy"))
    load_error(libet, npy, FORMAT, "cannot be tiled")


def test_pruned_heads_layer_out_of_range(libet, npy):
    edit(npy, lambda lines: lines + ["pruned_heads 2 0"])
    load_error(libet, npy, FORMAT, "pruned_heads names layer 2 but the model has 2 layers")


def test_pruned_head_out_of_range(libet, npy):
    edit(npy, lambda lines: lines + ["pruned_heads 0 4"])
    load_error(libet, npy, FORMAT, "names head 4 but the model has 4 heads")


def test_pruned_head_with_weights(libet, npy):
    """Layer 0 keeps all heads in the weights; declaring head 0 pruned disagrees with them."""
    edit(npy, lambda lines: lines + ["pruned_heads 0 0"])
    load_error(libet, npy, SHAPE, "pruned head 0 of layer 0 has nonzero values")


def test_repeated_head(libet, npy):
    edit(npy, replace("pruned_heads 1 2", "pruned_heads 1 2,2"))
    load_error(libet, npy, FORMAT, "repeated head")


def test_comments_and_blank_lines_ignored(libet, npy):
    edit(npy, lambda lines: [lines[0], "", "# a comment", *lines[1:], "   "])
    Engine(libet.lib, npy / "weights.txt").close()


def test_fuzzed_manifests_never_crash(libet, npy):
    """Random token swaps between lines: always a status and a message."""
    lines = (npy / "weights.txt").read_text().splitlines()
    rng = np.random.default_rng(1)
    for _ in range(60):
        fuzzed = [ln.split(" ") for ln in lines]
        for _ in range(2):
            a, b = rng.integers(0, len(fuzzed), size=2)
            i, j = rng.integers(0, len(fuzzed[a])), rng.integers(0, len(fuzzed[b]))
            fuzzed[a][i], fuzzed[b][j] = fuzzed[b][j], fuzzed[a][i]
        (npy / "weights.txt").write_text("\n".join(" ".join(f) for f in fuzzed) + "\n")
        try:
            Engine(libet.lib, npy / "weights.txt").close()
        except EngineError as exc:
            assert str(exc)
