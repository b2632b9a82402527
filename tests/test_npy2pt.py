"""export_npy → npy2pt round trip: the same weights, layouts, pruned heads and logits."""

from __future__ import annotations

import numpy as np
import pytest

from libet_build import apply_masks, export, ragged_batch, random_bert, random_masks, torch_logits
from pipeline_steps import npy2pt
from pipeline_steps.export_npy import state_dict_arrays, tensor_shapes, BertShape


@pytest.mark.parametrize("pruned", [False, True], ids=["dense", "pruned"])
def test_round_trip_state_dict(tmp_path, pruned):
    model = random_bert(seed=51)
    masks = random_masks(model, seed=51) if pruned else None
    if masks:
        apply_masks(model, masks)
    manifest = export(model, tmp_path / "npy", masks)
    back = npy2pt.read_export(manifest)
    original = state_dict_arrays(model)
    assert set(back.tensors) == set(tensor_shapes(BertShape.from_hf(model.config)))
    for name, value in back.tensors.items():
        np.testing.assert_array_equal(value, original[name], err_msg=name)
    if masks:
        assert back.masks.pruned_heads == masks.pruned_heads
        assert set(back.masks.layouts) == set(masks.layouts)
        for name, layout in masks.layouts.items():
            np.testing.assert_array_equal(back.masks.layouts[name].kept, layout.kept)


def test_round_trip_model_logits_and_cli(tmp_path):
    model = random_bert(seed=52)
    masks = random_masks(model, seed=52)
    apply_masks(model, masks)
    manifest = export(model, tmp_path / "npy", masks)
    assert npy2pt.main(["--manifest", str(manifest), "--out-dir", str(tmp_path / "hf")]) == 0
    from transformers import BertForSequenceClassification

    restored = BertForSequenceClassification.from_pretrained(tmp_path / "hf", attn_implementation="eager").eval()
    tokens, segments, lengths = ragged_batch(np.random.default_rng(0), [5, 40, 1], 97)
    np.testing.assert_array_equal(torch_logits(restored, tokens, segments, lengths)[0],
                                  torch_logits(model, tokens, segments, lengths)[0])
    assert (tmp_path / "hf" / "masks.json").is_file()


def test_float16_round_trip_is_rounding_only(tmp_path):
    model = random_bert(seed=53)
    back = npy2pt.read_export(export(model, tmp_path / "npy", None, dtype="float16"))
    for name, value in state_dict_arrays(model).items():
        if name in back.tensors:
            np.testing.assert_array_equal(back.tensors[name], value.astype(np.float16).astype(np.float32))


def test_rejects_paths_outside_folder(tmp_path):
    manifest = export(random_bert(seed=54), tmp_path / "npy")
    text = manifest.read_text().replace("bert.pooler.dense.bias.npy", "../bert.pooler.dense.bias.npy")
    manifest.write_text(text)
    with pytest.raises(npy2pt.ManifestError, match="not a plain file name"):
        npy2pt.read_export(manifest)


def test_rejects_file_disagreeing_with_manifest(tmp_path):
    manifest = export(random_bert(seed=55), tmp_path / "npy")
    np.save(manifest.parent / "classifier.bias.npy", np.zeros(4, dtype=np.float32))
    with pytest.raises(npy2pt.ManifestError, match=r"classifier.bias.npy is <f4 \(4,\), the manifest says <f4 \(3,\)"):
        npy2pt.read_export(manifest)
