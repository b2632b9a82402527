"""The export_npy stage: files, manifest records, metrics, and refusals that would change the model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from libet_build import apply_masks, random_bert, random_masks
from pipeline_steps import export_npy
from pipeline_steps.tiles import ModelMasks


@pytest.fixture
def checkpoint(tmp_path):
    model = random_bert(seed=61)
    masks = random_masks(model, seed=61, density=0.5)
    apply_masks(model, masks)
    model.save_pretrained(tmp_path / "model")
    masks.save(tmp_path / "masks.json")
    return model, masks, tmp_path


def run_stage(tmp_path, masks_path, dtype="float32", out="export"):
    return export_npy.main(["--params", json.dumps({"export": {"dtype": dtype}}), "--model-dir", str(tmp_path / "model"),
                            "--masks", str(masks_path), "--sparsity", "0.5", "--out-dir", str(tmp_path / out)])


def test_stage_writes_manifest_and_metrics(checkpoint, mlflow_uri):
    model, masks, tmp_path = checkpoint
    assert run_stage(tmp_path, tmp_path / "masks.json") == 0
    out = tmp_path / "export"
    lines = (out / "weights.txt").read_text().splitlines()
    assert lines[0] == "et-weights 1"
    assert sum(ln.startswith("tiled ") for ln in lines) == 6 * model.config.num_hidden_layers
    assert sum(ln.startswith("pruned_heads ") for ln in lines) == len(masks.pruned_heads)
    assert "config activation gelu" in lines
    tiled = next(ln for ln in lines if ln.startswith("tiled bert.encoder.layer.0.attention.self.query.weight "))
    assert tiled.split()[4] == "16x16"
    metrics = json.loads((out / "metrics.json").read_text())
    kept = sum(l.kept.size for l in masks.layouts.values())
    assert metrics["kept_tiles"] == kept
    assert metrics["total_tiles"] == sum(l.n_tiles for l in masks.layouts.values())
    assert metrics["sparsity"] == 0.5
    assert metrics["pruned_heads"] == sum(len(h) for h in masks.pruned_heads.values())
    files = {p.name for p in out.iterdir()}
    for ln in lines:
        f = ln.split()
        if f[0] == "tensor":
            assert f[4] in files
        elif f[0] == "tiled":
            assert {f[5], f[6]} <= files


def test_float16_halves_the_files(checkpoint, mlflow_uri):
    _, _, tmp_path = checkpoint
    run_stage(tmp_path, tmp_path / "masks.json", out="f32")
    run_stage(tmp_path, tmp_path / "masks.json", dtype="float16", out="f16")
    f32 = json.loads((tmp_path / "f32" / "metrics.json").read_text())["bytes"]
    f16 = json.loads((tmp_path / "f16" / "metrics.json").read_text())["bytes"]
    assert f16 < 0.6 * f32
    assert " f16 " in (tmp_path / "f16" / "weights.txt").read_text()


def test_nonzero_weight_outside_kept_tiles(checkpoint, mlflow_uri):
    model, masks, tmp_path = checkpoint
    name = "bert.encoder.layer.1.output.dense.weight"
    r, c = np.argwhere(~masks.layouts[name].dense_mask())[0]
    with torch.no_grad():
        model.state_dict()[name][r, c] = 0.5
    model.save_pretrained(tmp_path / "model")
    with pytest.raises(export_npy.ExportError, match=f"{name}: 1 nonzero values .* outside the kept tiles"):
        run_stage(tmp_path, tmp_path / "masks.json")
    assert not (tmp_path / "export").exists()


def test_pruned_head_with_weights(checkpoint, mlflow_uri):
    model, masks, tmp_path = checkpoint
    layer = next(iter(masks.pruned_heads))
    head = masks.pruned_heads[layer][0]
    d = model.config.hidden_size // model.config.num_attention_heads
    name = f"bert.encoder.layer.{layer}.attention.self.value.bias"
    with torch.no_grad():
        model.state_dict()[name][head * d] = 1.0
    model.save_pretrained(tmp_path / "model")
    with pytest.raises(export_npy.ExportError, match=f"{name}: pruned head {head} of layer {layer} has nonzero"):
        run_stage(tmp_path, tmp_path / "masks.json")


def test_layout_on_non_encoder_weight(checkpoint, mlflow_uri):
    _, masks, tmp_path = checkpoint
    layout = next(iter(masks.layouts.values()))
    bad = ModelMasks({**masks.layouts, "bert.pooler.dense.weight": layout}, masks.pruned_heads)
    bad.save(tmp_path / "bad.json")
    with pytest.raises(export_npy.ExportError, match="'bert.pooler.dense.weight', which is not an encoder linear"):
        run_stage(tmp_path, tmp_path / "bad.json")


def test_layout_shape_mismatch(checkpoint, mlflow_uri):
    _, masks, tmp_path = checkpoint
    name = "bert.encoder.layer.0.intermediate.dense.weight"
    other = masks.layouts["bert.encoder.layer.0.output.dense.weight"]
    ModelMasks({**masks.layouts, name: other}, masks.pruned_heads).save(tmp_path / "bad.json")
    with pytest.raises(export_npy.ExportError, match=f"layout of '{name}' has shape"):
        run_stage(tmp_path, tmp_path / "bad.json")


def test_unsupported_activation(tmp_path):
    model = random_bert(seed=62)
    model.config.hidden_act = "gelu_new"
    with pytest.raises(export_npy.ExportError, match="hidden_act 'gelu_new' is not supported"):
        export_npy.BertShape.from_hf(model.config)


def test_non_finite_weight(tmp_path):
    model = random_bert(seed=63)
    tensors = export_npy.state_dict_arrays(model)
    tensors["classifier.weight"][0, 0] = np.inf
    with pytest.raises(export_npy.ExportError, match="classifier.weight: non-finite values"):
        export_npy.export_tensors(tensors, export_npy.BertShape.from_hf(model.config), ModelMasks({}, {}), tmp_path)
