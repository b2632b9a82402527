"""Mask enforcement: pruned elements stay bit-exactly zero through training; violations are found."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline_steps import modeling
from pipeline_steps.head_pruning import attention_layers, head_weight_scores
from pipeline_steps.mask_selection import SparsityPlan, select_masks
from pipeline_steps.masking import MaskEnforcer, apply_masks, element_masks, mask_violations, weight_arrays, \
    weight_sparsity
from pipeline_steps.sensitivity import allocate
from pipeline_steps.tile_pruning import model_prunable_weights
from pipeline_steps.tiles import ModelMasks, TileLayout
from pruning_fixtures import random_batches, tiny_bert


def _masks(model, target=0.6):
    weights = model_prunable_weights(model)
    arrays = weight_arrays(model, weights)
    plan = SparsityPlan(target, allocate(weights, target, {"qkv": 1, "attn_output": 1, "ffn": 1}), (16, 16), 0,
                        head_weight_scores(attention_layers(weights, 4), arrays), 0.5)
    return select_masks(arrays, weights, 4, plan)


def test_masks_survive_training_bit_exactly():
    model = tiny_bert()
    masks = _masks(model)
    emasks = element_masks(model, masks)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    with MaskEnforcer(model, emasks) as enforcer:
        modeling.train(model, random_batches(n_batches=6), epochs=2, learning_rate=1e-2, weight_decay=0.1,
                       warmup_ratio=0.0, device=torch.device("cpu"), after_step=enforcer.after_step)
    assert mask_violations(model, emasks) == {}
    params = dict(model.named_parameters())
    for name, m in emasks.items():
        assert torch.all(params[name].detach()[~m] == 0)
        assert not torch.equal(params[name].detach()[m], start[name][m])  # the rest did train
    assert weight_sparsity(model) >= 0.6 - 1e-6


def test_gradient_hooks_alone_keep_zeros_under_adamw():
    model = tiny_bert()
    emasks = element_masks(model, _masks(model, 0.5))
    enforcer = MaskEnforcer(model, emasks)  # applies the masks; gradients of removed elements are zeroed
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for batch in random_batches(n_batches=3):
        opt.zero_grad()
        model(**batch).loss.backward()
        opt.step()
    assert mask_violations(model, emasks) == {}
    enforcer.close()
    opt.zero_grad()
    model(**random_batches(n_batches=1)[0]).loss.backward()
    opt.step()
    assert mask_violations(model, emasks) != {}  # without hooks and re-application, zeros revive


def test_violations_are_reported_per_parameter():
    model = tiny_bert()
    emasks = element_masks(model, _masks(model))
    apply_masks(model, emasks)
    name = next(iter(emasks))
    idx = torch.nonzero(~emasks[name])[0]
    with torch.no_grad():
        dict(model.named_parameters())[name][tuple(idx)] = 1e-30
    assert mask_violations(model, emasks) == {name: 1}


def test_bad_masks_name_the_culprit():
    model = tiny_bert()
    lay = TileLayout.from_tile_mask(np.ones((4, 4), dtype=bool), (16, 16))
    with pytest.raises(ValueError, match="classifier.weight"):
        element_masks(model, ModelMasks({"classifier.weight": lay}, {}))
    wrong = TileLayout.from_tile_mask(np.ones((8, 4), dtype=bool), (16, 16))
    with pytest.raises(ValueError, match="layout shape"):
        element_masks(model, ModelMasks({"bert.encoder.layer.0.attention.self.query.weight": wrong}, {}))
    with pytest.raises(ValueError, match="layers \\[7\\]"):
        element_masks(model, ModelMasks({}, {7: [0]}))
