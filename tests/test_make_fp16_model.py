"""cuda_lib/gpu/make_fp16_model.py: the float16 copy carried to GPU machines loads back as float32."""

from __future__ import annotations

import torch
from safetensors import safe_open

from gpu_scripts import load
from pipeline_steps import modeling

make_fp16_model = load("make_fp16_model")


def test_fp16_copy_is_float16_on_disk_and_float32_when_loaded(tmp_path, tiny_bert_dir):
    out = tmp_path / "fp16"
    files = make_fp16_model.make_fp16_copy(str(tiny_bert_dir), out)
    assert out / "model.safetensors" in files and out / "config.json" in files
    with safe_open(out / "model.safetensors", "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}

    original = modeling.load_classifier(tiny_bert_dir, num_labels=2)
    copy = modeling.load_classifier(out, num_labels=2)  # training must not run in float16
    assert copy.dtype == torch.float32
    ref = dict(original.bert.named_parameters())
    for name, p in copy.bert.named_parameters():
        torch.testing.assert_close(p, ref[name].half().float(), rtol=0, atol=0)
    text = "a short sentence, with punctuation!"
    assert modeling.load_tokenizer(out)(text)["input_ids"] == modeling.load_tokenizer(tiny_bert_dir)(text)["input_ids"]
