"""Attention-aware pruning: heads and dimension blocks removed consistently across Wq/Wk/Wv/Wo."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline_steps.head_pruning import attention_element_masks, attention_layers, head_weight_scores
from pipeline_steps.mask_selection import SparsityPlan, select_masks
from pipeline_steps.masking import apply_masks, element_masks, weight_arrays
from pipeline_steps.sensitivity import allocate
from pipeline_steps.tile_pruning import model_prunable_weights
from pipeline_steps.tiles import ModelMasks, TileLayout
from pruning_fixtures import random_batches, tiny_bert

TILE = (16, 16)


def _layer0(model):
    return attention_layers(model_prunable_weights(model), model.config.num_attention_heads)[0]


def _layout_without_rows(shape, rows):
    mask = np.ones((shape[0] // TILE[0], shape[1] // TILE[1]), dtype=bool)
    for r in rows:
        mask[r // TILE[0], :] = False
    return TileLayout.from_tile_mask(mask, TILE)


def _logits(model, batches):
    model.eval()
    with torch.no_grad():
        return torch.cat([model(**{k: v for k, v in b.items() if k != "labels"}).logits for b in batches])


def test_a_pruned_head_is_removed_from_all_four_weights_and_the_biases():
    model = tiny_bert()
    att = _layer0(model)
    m = attention_element_masks(att, {}, [2])
    rows = slice(32, 48)
    for w in (att.query, att.key, att.value):
        assert not m[w.name][rows].any() and m[w.name][:32].all() and m[w.name][48:].all()
        assert not m[w.bias_name][rows].any() and m[w.bias_name][:32].all()
    assert not m[att.output.name][:, rows].any() and m[att.output.name][:, :32].all()


def test_qk_dimension_is_dead_only_when_removed_from_both():
    model = tiny_bert()
    att = _layer0(model)
    q_only = {att.query.name: _layout_without_rows(att.query.shape, [0])}
    m = attention_element_masks(att, q_only, [])
    assert m[att.query.bias_name].all() and m[att.key.bias_name].all()  # q row gone, q = bias: still live
    both = {att.query.name: _layout_without_rows(att.query.shape, [16]),
            att.key.name: _layout_without_rows(att.key.shape, [16])}
    m = attention_element_masks(att, both, [])
    for b in (att.query.bias_name, att.key.bias_name):
        assert not m[b][16:32].any() and m[b][:16].all() and m[b][32:].all()


def test_dead_v_dimension_zeroes_its_bias_and_wo_columns():
    model = tiny_bert()
    att = _layer0(model)
    m = attention_element_masks(att, {att.value.name: _layout_without_rows(att.value.shape, [48])}, [])
    assert not m[att.value.bias_name][48:64].any() and m[att.value.bias_name][:48].all()
    assert not m[att.output.name][:, 48:64].any() and m[att.output.name][:, :48].all()


def test_pruned_head_out_of_range_is_an_error():
    model = tiny_bert()
    with pytest.raises(ValueError, match="pruned head 4"):
        attention_element_masks(_layer0(model), {}, [4])


def test_selection_prunes_the_least_important_heads_first():
    model = tiny_bert()
    weights = model_prunable_weights(model)
    arrays = weight_arrays(model, weights)
    scores = np.array([[3.0, 0.1, 2.0, 1.0], [0.2, 5.0, 4.0, 3.0]])
    plan = SparsityPlan(0.5, allocate(weights, 0.5, {"qkv": 1, "attn_output": 1, "ffn": 1}), TILE, 0, scores, 0.5)
    masks = select_masks(arrays, weights, 4, plan)
    assert masks.pruned_heads[0][0] == 1 and masks.pruned_heads[1][0] == 0
    for layer, heads in masks.pruned_heads.items():
        assert len(heads) < 4  # at least one head survives


@pytest.mark.parametrize("share", [0.5, 1.0])
def test_removed_structures_are_functionally_dead(share):
    """Whatever survives in a partner of a removed structure cannot change the output."""
    model = tiny_bert(seed=3)
    weights = model_prunable_weights(model)
    atts = attention_layers(weights, 4)
    arrays = weight_arrays(model, weights)
    plan = SparsityPlan(0.7, allocate(weights, 0.7, {"qkv": 1, "attn_output": 1, "ffn": 1}), TILE, 0,
                        head_weight_scores(atts, arrays), share)
    masks = select_masks(arrays, weights, 4, plan)
    emasks = element_masks(model, masks)
    apply_masks(model, emasks)
    batches = random_batches()
    reference = _logits(model, batches)
    params = dict(model.named_parameters())
    dead_found = 0
    with torch.no_grad():
        for att in atts:
            qk_dead = ~emasks.get(att.query.bias_name, torch.ones(att.all_head, dtype=torch.bool))
            v_dead = ~emasks.get(att.value.bias_name, torch.ones(att.all_head, dtype=torch.bool))
            dead_found += int(qk_dead.sum() + v_dead.sum())
            # with q_d == 0 exactly, k_d does not matter (and vice versa); with context_d == 0, Wo[:, d] does not
            params[att.key.name][qk_dead] = torch.randn(int(qk_dead.sum()), att.key.shape[1])
            params[att.key.bias_name][qk_dead] = 1.0
            params[att.output.name][:, v_dead] = torch.randn(att.output.shape[0], int(v_dead.sum()))
            for h in masks.pruned_heads.get(att.layer, []):
                assert not params[att.query.name][h * 16:(h + 1) * 16].any()
                assert not params[att.value.name][h * 16:(h + 1) * 16].any()
    assert dead_found > 0
    assert torch.allclose(_logits(model, batches), reference, atol=1e-6)


def test_masks_from_model_masks_file_agree_with_the_rule(tmp_path):
    model = tiny_bert()
    att = _layer0(model)
    masks = ModelMasks({att.value.name: _layout_without_rows(att.value.shape, [0])}, {1: [3]})
    masks.save(tmp_path / "m.json")
    e = element_masks(model, ModelMasks.load(tmp_path / "m.json"))
    assert not e[att.output.name][:, :16].any()
    layer1_q = "bert.encoder.layer.1.attention.self.query.weight"
    assert not e[layer1_q][48:].any() and e[layer1_q][:48].all()
