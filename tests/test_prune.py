"""The prune stage end to end on a tiny model: outputs, exact masks, metrics, MLflow, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline_steps import modeling, prune, tracking
from pipeline_steps.masking import element_masks, mask_violations
from pipeline_steps.tile_pruning import layouts_from_model
from pipeline_steps.tiles import ModelMasks
from pruning_fixtures import stage_inputs, stage_params


def _run(tmp_path, params, sparsity="0.5", out="prune/s0.5", model_dir=None):
    model, data, _ = stage_inputs(tmp_path / "in") if model_dir is None else (model_dir, tmp_path / "in" / "data", None)
    argv = ["--run-dir", str(tmp_path / "run"), "--params", json.dumps(params), "--threads", "1", "--seed", "13",
            "--sparsity", sparsity, "--model-dir", str(model), "--data-dir", str(data), "--out-dir", str(tmp_path / out)]
    return prune.main(argv), tmp_path / out


@pytest.mark.parametrize("algorithm,policy", [("reweighted", "sensitivity"), ("admm", "uniform")])
def test_prune_writes_an_exactly_masked_model(tmp_path, mlflow_uri, algorithm, policy):
    rc, out = _run(tmp_path, stage_params(algorithm, policy))
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("accuracy_before_retrain", "f1_before_retrain", "tile_sparsity", "weight_sparsity", "heads_pruned",
                "sparsity", "encoder_flops_per_token", "dense_encoder_flops_per_token"):
        assert key in metrics, key
    assert metrics["sparsity"] == 0.5 and abs(metrics["tile_sparsity"] - 0.5) <= 1.0 / 192
    assert metrics["weight_sparsity"] >= metrics["tile_sparsity"] - 1e-9
    assert metrics["encoder_flops_per_token"] < metrics["dense_encoder_flops_per_token"]
    masks = ModelMasks.load(out / "masks.json")
    model = modeling.load_classifier(out / "model")
    assert mask_violations(model, element_masks(model, masks)) == {}
    from_model = layouts_from_model(model, (16, 16))
    for name, lay in masks.layouts.items():  # every non-zero tile is a kept tile (a kept one may be all zero)
        assert np.isin(from_model[name].kept, lay.kept).all(), name
    mlc = tracking.client(mlflow_uri)
    runs = mlc.search_runs([e.experiment_id for e in mlc.search_experiments()],
                           filter_string="tags.mlflow.runName = 'prune[s0.5]'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run = runs[0]
    assert run.data.tags["algorithm"] == algorithm and "checkpoint_path" in run.data.tags
    history = mlc.get_metric_history(run.info.run_id, "prune.frac_tiles_below_threshold")
    assert len(history) >= 4
    assert mlc.get_metric_history(run.info.run_id, "prune.penalty")
    assert mlc.get_metric_history(run.info.run_id, "train.loss")


def test_prune_is_reproducible_from_the_seed(tmp_path, mlflow_uri):
    rc1, out1 = _run(tmp_path, stage_params(), out="a")
    rc2, out2 = _run(tmp_path, stage_params(), out="b", model_dir=tmp_path / "in" / "finetune" / "model")
    assert rc1 == rc2 == 0
    assert (out1 / "masks.json").read_text() == (out2 / "masks.json").read_text()


def test_bad_params_fail_clearly_and_write_nothing(tmp_path, mlflow_uri, capsys):
    params = stage_params()
    del params["prune"]["tile"]
    rc, out = _run(tmp_path, params)
    assert rc == 1 and not out.exists()
    assert "prune.tile" in capsys.readouterr().err
    params = stage_params()
    params["prune"]["tile"] = [16, 24]
    rc, out = _run(tmp_path / "b", params)
    assert rc == 1 and not out.exists()
    assert "does not divide" in capsys.readouterr().err
