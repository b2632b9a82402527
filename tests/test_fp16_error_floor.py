"""cuda_lib/gpu/fp16_error_floor.py: the float64 emulation of the CUDA engine's fp16 storage."""

from __future__ import annotations

import pytest
import torch

from gpu_scripts import load
from pipeline_steps import random_bert

floor = load("fp16_error_floor")


@pytest.fixture(scope="module")
def case():
    torch.manual_seed(0)
    model = random_bert.make_model("minilm", vocab=300, seed=3, gain=2.0)
    ids = torch.randint(0, 300, (2, 24))
    seg = torch.randint(0, 2, (2, 24))
    return model, ids, seg


def test_unrounded_forward_is_transformers_float64(case):
    model, ids, seg = case
    with torch.no_grad():
        ours = floor.encoder(model, ids, seg, floor.Rounding())
        hf = model.double()(input_ids=ids, token_type_ids=seg, output_hidden_states=True).hidden_states[-1]
    model.float()
    assert floor.relative_error(ours, hf) < 1e-12


def test_each_rounding_costs_fp16_sized_error(case):
    model, ids, seg = case
    with torch.no_grad():
        ref = floor.encoder(model, ids, seg, floor.Rounding())
        errors = {name: floor.relative_error(floor.encoder(model, ids, seg, r), ref) for name, r in floor.ROWS.items()}
    for name, err in errors.items():  # fp16 has 11 significant bits: 1e-5 .. 1e-2 after a few layers
        assert 1e-5 < err < 1e-2, (name, err)
    # weights and activations together cost more than the weights alone
    assert errors["engine (weights + activations)"] > errors["weights"]


def test_main_prints_every_row(capsys):
    assert floor.main(["--shape", "minilm", "--batch", "1", "--seq", "12", "--seed", "2"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in floor.ROWS)
    assert torch.is_grad_enabled()  # the script leaves the process's autograd mode as it found it
