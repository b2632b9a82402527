"""Bad weight folders are refused by libet's loader with a status and a message naming the file and
the tensor: truncated or corrupted .npy, wrong dtype, NaN/Inf, shapes or tile layouts disagreeing
with the manifest, and manifests reaching outside their folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from pipeline_steps.engine import Engine, EngineError
from reliability_model import copy_export, libet, tiny_export  # noqa: F401

IO, FORMAT, SHAPE = 2, 3, 4
WORD = "bert.embeddings.word_embeddings.weight"
POOLER = "bert.pooler.dense.weight"
QUERY = "bert.encoder.layer.0.attention.self.query.weight"
FFN1 = "bert.encoder.layer.0.intermediate.dense.weight"


def _npy(folder: Path, name: str) -> Path:
    return folder / f"{name}.npy"


def _edit_manifest(manifest: Path, old: str, new: str) -> None:
    text = manifest.read_text()
    assert old in text, old
    manifest.write_text(text.replace(old, new, 1))


def _truncate(folder: Path) -> None:
    path = _npy(folder, WORD)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _bad_magic(folder: Path) -> None:
    path = _npy(folder, POOLER)
    path.write_bytes(b"\x93NUMPX" + path.read_bytes()[6:])


def _garbled_header(folder: Path) -> None:
    path = _npy(folder, POOLER)
    data = bytearray(path.read_bytes())
    data[10:20] = b"{'descr':<"  # unquoted value inside the header dict
    path.write_bytes(bytes(data))


def _empty_file(folder: Path) -> None:
    _npy(folder, POOLER).write_bytes(b"")


def _save_as(name: str, dtype: str) -> Callable[[Path], None]:
    def mutate(folder: Path) -> None:
        path = _npy(folder, name)
        np.save(path, np.load(path).astype(dtype))
    return mutate


def _fortran(folder: Path) -> None:
    path = _npy(folder, POOLER)
    np.save(path, np.asfortranarray(np.load(path)))


def _poison(name: str, value: float, file_suffix: str = "") -> Callable[[Path], None]:
    def mutate(folder: Path) -> None:
        path = folder / f"{name}{file_suffix}.npy"
        arr = np.load(path)
        arr.reshape(-1)[3] = value
        np.save(path, arr)
    return mutate


def _reshape_pooler(folder: Path) -> None:
    path = _npy(folder, POOLER)
    np.save(path, np.load(path)[:, :16].copy())


def _manifest_shape(folder: Path) -> None:
    _edit_manifest(folder / "weights.txt", f"tensor {POOLER} f32 32,32", f"tensor {POOLER} f32 32,16")


def _index_edit(fn: Callable[[np.ndarray], np.ndarray], dtype: str = "int32") -> Callable[[Path], None]:
    def mutate(folder: Path) -> None:
        path = folder / f"{QUERY}.index.npy"
        np.save(path, fn(np.load(path)).astype(dtype))
    return mutate


def _unsorted_index(folder: Path) -> None:
    path = next(p for p in sorted(folder.glob("*.index.npy")) if np.load(p).size >= 2)
    ids = np.load(path)
    ids[[0, 1]] = ids[[1, 0]]
    np.save(path, ids)


def _fewer_tiles(folder: Path) -> None:
    path = folder / f"{QUERY}.tiles.npy"
    np.save(path, np.load(path)[:-1].copy())


def _tile_not_dividing(folder: Path) -> None:
    _edit_manifest(folder / "weights.txt", f"{FFN1} f32 64,32 16x16", f"{FFN1} f32 64,32 16x12")


def _unpruned_head(folder: Path) -> None:
    heads = [line for line in (folder / "weights.txt").read_text().splitlines() if line.startswith("pruned_heads")]
    head = int(heads[0].split()[2].split(",")[0])
    path = folder / "bert.encoder.layer.0.attention.self.key.bias.npy"
    arr = np.load(path)
    arr[head * 16] = 0.5
    np.save(path, arr)


def _missing(folder: Path) -> None:
    _npy(folder, POOLER).unlink()


def _reference(file_field: str) -> Callable[[Path], None]:
    def mutate(folder: Path) -> None:
        _edit_manifest(folder / "weights.txt", f"{POOLER}.npy", file_field)
    return mutate


def _config_layers(value: str) -> Callable[[Path], None]:
    def mutate(folder: Path) -> None:
        _edit_manifest(folder / "weights.txt", "config layers 1\n", f"config layers {value}\n")
    return mutate


def _symlink_outside(folder: Path) -> None:
    outside = folder.parent / "outside.npy"
    os.replace(_npy(folder, POOLER), outside)
    _npy(folder, POOLER).symlink_to(outside)


# case -> (mutation of a copied export folder, expected status, texts the message must contain)
CASES: dict[str, tuple[Callable[[Path], None], int, list[str]]] = {
    "truncated_npy": (_truncate, FORMAT, [f"{WORD}.npy", "truncated .npy file", "expected"]),
    "bad_magic": (_bad_magic, FORMAT, [f"{POOLER}.npy", "not a .npy file (bad magic string)"]),
    "garbled_header": (_garbled_header, FORMAT, [f"{POOLER}.npy", "malformed .npy header"]),
    "empty_file": (_empty_file, FORMAT, [f"{POOLER}.npy", "truncated .npy file: 0 bytes"]),
    "missing_file": (_missing, IO, [f"{POOLER}.npy", "cannot open .npy file"]),
    "dtype_float64": (_save_as(POOLER, "float64"), FORMAT, [f"{POOLER}.npy", "unsupported dtype '<f8'"]),
    "dtype_int32": (_save_as(POOLER, "int32"), SHAPE, [f"{POOLER}.npy", "dtype <i4 but the manifest declares <f4",
                                                       f"'{POOLER}'"]),
    "dtype_float16_declared_f32": (_save_as(WORD, "float16"), SHAPE, [f"{WORD}.npy", "dtype <f2"]),
    "big_endian": (_save_as(POOLER, ">f4"), FORMAT, [f"{POOLER}.npy", "unsupported dtype '>f4'"]),
    "fortran_order": (_fortran, FORMAT, [f"{POOLER}.npy", "Fortran-order"]),
    "nan_dense": (_poison(WORD, np.nan), FORMAT, ["non-finite value at flat index 3", f"'{WORD}'"]),
    "inf_dense": (_poison(POOLER, np.inf), FORMAT, ["non-finite value at flat index 3", f"'{POOLER}'"]),
    "neg_inf_tiles": (_poison(QUERY, -np.inf, ".tiles"), FORMAT, ["non-finite value", f"'{QUERY}'"]),
    "npy_shape_vs_manifest": (_reshape_pooler, SHAPE, [f"{POOLER}.npy", "shape [32,16] but the manifest declares [32,32]"]),
    "manifest_shape_vs_config": (_manifest_shape, SHAPE, [f"tensor '{POOLER}' has shape [32,16] but the config implies [32,32]"]),
    "tile_ids_not_ascending": (_unsorted_index, SHAPE, [".index.npy: tile ids of 'bert.encoder.layer.0.",
                                                       "are not strictly ascending at position 1"]),
    "tile_id_out_of_range": (_index_edit(lambda a: np.concatenate([a[:-1], [4]])), SHAPE,
                             ["tile id 4", "outside [0, 4)", f"'{QUERY}'"]),
    "tile_index_int64": (_index_edit(lambda a: a, "int64"), SHAPE, [f"{QUERY}.index.npy", "must be <i4 1-D"]),
    "tile_count_vs_index": (_fewer_tiles, SHAPE, [f"{QUERY}.tiles.npy", "but the manifest declares"]),
    "tile_not_dividing": (_tile_not_dividing, FORMAT, ["tile shape 16x12 does not divide the shape 64,32", FFN1]),
    "pruned_head_not_zero": (_unpruned_head, SHAPE, ["pruned head", "of layer 0", "the key bias"]),
    "path_parent": (_reference(f"../{POOLER}.npy"), FORMAT, [f"'../{POOLER}.npy' is not a plain file name"]),
    "path_absolute": (_reference("/etc/passwd"), FORMAT, ["'/etc/passwd' is not a plain file name"]),
    "path_subfolder": (_reference(f"sub/{POOLER}.npy"), FORMAT, ["is not a plain file name"]),
    "path_hidden": (_reference(".hidden.npy"), FORMAT, ["'.hidden.npy' is not a plain file name"]),
    "path_backslash": (_reference("..\\x.npy"), FORMAT, ["is not a plain file name"]),
    "symlink_outside": (_symlink_outside, FORMAT, [f"{POOLER}.npy", "outside"]),
    "config_value_overflows_int64": (_config_layers("9223372036854775808"), FORMAT,
                                     ["config layers = '9223372036854775808' is not an integer in [1, 16777216]"]),
    "config_value_zero": (_config_layers("0"), FORMAT, ["config layers = '0' is not an integer in [1,"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_weights_are_refused_naming_the_culprit(case: str, tmp_path: Path, libet, tiny_export) -> None:
    """Each bad folder: EngineError with the expected status, a message naming file and tensor; the
    intact folder loads (so the failure is the mutation's)."""
    mutate, status, texts = CASES[case]
    manifest = copy_export(tiny_export, tmp_path / "w")
    mutate(manifest.parent)
    with pytest.raises(EngineError) as err:
        Engine(libet.lib, manifest, backend="cpu")
    message = str(err.value)
    assert err.value.status == status, message
    for text in texts:
        assert text in message, (text, message)


def test_intact_copy_loads_and_runs(tmp_path: Path, libet, tiny_export) -> None:
    """The reference for the cases above: an untouched copy loads and computes finite logits."""
    manifest = copy_export(tiny_export, tmp_path / "w")
    with Engine(libet.lib, manifest, backend="cpu") as eng:
        logits = eng.forward(np.array([1, 2, 3], dtype=np.int32), np.array([3], dtype=np.int32))
    assert logits.shape == (1, 2) and np.isfinite(logits).all()


def test_npy_dir_elsewhere_is_only_the_given_folder(tmp_path: Path, libet, tiny_export) -> None:
    """An explicit ``npy_dir`` is where files are read from; the manifest's own folder is not consulted."""
    manifest = copy_export(tiny_export, tmp_path / "w")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EngineError, match=str(empty)) as err:
        Engine(libet.lib, manifest, npy_dir=empty, backend="cpu")
    assert err.value.status == IO


def test_failed_load_leaves_process_usable(tmp_path: Path, libet, tiny_export) -> None:
    """After many refused loads the same process still loads and runs a good model (no leaked state,
    no stale error message)."""
    bad = copy_export(tiny_export, tmp_path / "bad")
    _truncate(bad.parent)
    for _ in range(50):
        with pytest.raises(EngineError):
            Engine(libet.lib, bad, backend="cpu")
    with Engine(libet.lib, tiny_export / "weights.txt", backend="cpu") as eng:
        assert eng.forward(np.array([5], dtype=np.int32), np.array([1], dtype=np.int32)).shape == (1, 2)


def test_symlink_inside_the_folder_is_accepted(tmp_path: Path, libet, tiny_export) -> None:
    """Only escaping links are refused: a link to another file of the same folder still loads."""
    manifest = copy_export(tiny_export, tmp_path / "w")
    folder = manifest.parent
    os.replace(_npy(folder, POOLER), folder / "pooler-data.npy")
    _npy(folder, POOLER).symlink_to("pooler-data.npy")
    with Engine(libet.lib, manifest, backend="cpu") as eng:
        assert eng.info["hidden"] == 32


def test_infer_stage_on_corrupted_export_writes_nothing(tmp_path: Path, libet, mlflow_uri, capsys) -> None:
    """The infer stage on an export whose weight file was truncated after export_npy: exit 1 with one
    error line naming the file, the stage's MLflow run FAILED with that message, no infer output."""
    import json

    from libet_build import export, random_bert
    from pipeline_steps import glue, infer, modeling, tracking

    tokenizer = modeling.load_tokenizer(modeling.EMBEDDED_MODEL)
    model = random_bert(3, vocab=tokenizer.vocab_size, hidden=32, heads=2, intermediate=64, max_positions=64, labels=2)
    modeling.save_checkpoint(model, tokenizer, tmp_path / "model")
    manifest = export(model, tmp_path / "npy")
    data = tmp_path / "data"
    data.mkdir()
    (data / glue.TASK_FILE).write_text(json.dumps({"task": "mrpc"}))
    glue.write_split(data / "dev.tsv", glue.TASKS["mrpc"], [glue.Example("a cat", "a dog", 1.0)] * 4)
    _truncate(manifest.parent)
    out = tmp_path / "infer"
    params = {"model": {"max_seq_length": 32}, "infer": {"backend": "cpu", "batch_size": 4}}
    assert infer.main(["--params", json.dumps(params), "--lib", str(libet.lib), "--exe", str(libet.exe), "--manifest",
                       str(manifest), "--model-dir", str(tmp_path / "model"), "--data-dir", str(data), "--out-dir",
                       str(out)]) == 1
    assert f"format error: {_npy(manifest.parent, WORD)}: truncated .npy file" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".infer.tmp-*"))
    mlc = tracking.client(mlflow_uri)
    (run,) = mlc.search_runs([e.experiment_id for e in mlc.search_experiments()], "tags.stage = 'infer'")
    assert run.info.status == "FAILED" and "truncated .npy file" in run.data.tags["error"]


@pytest.mark.parametrize("case", ["path_parent", "path_absolute", "symlink_outside"])
def test_npy2pt_reads_only_the_manifest_folder(case: str, tmp_path: Path, tiny_export) -> None:
    """The Python reader of exports (npy2pt) refuses the same escapes as libet, naming the file."""
    from pipeline_steps import npy2pt

    manifest = copy_export(tiny_export, tmp_path / "w")
    CASES[case][0](manifest.parent)
    with pytest.raises(npy2pt.ManifestError, match="is not a plain file name|outside the folder"):
        npy2pt.read_export(manifest)
