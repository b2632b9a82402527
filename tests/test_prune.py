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
from stage_failures import DAMAGES, damage_split, digests, only_child, open_run_dir


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


@pytest.mark.parametrize("damage", DAMAGES)
def test_bad_dev_split_fails_the_branch_run_and_keeps_earlier_outputs(tmp_path, mlflow_uri, capsys, damage):
    """A missing or non-UTF-8 dev.tsv: exit 1 with one error line naming the file, the prune[s0.5] child run
    FAILED with the same message (it opens before the data is read), the fine-tuned model, the data folder
    and the branch's previous output byte for byte unchanged."""
    model, data, _ = stage_inputs(tmp_path / "in")
    run_dir, info = open_run_dir(tmp_path)
    expected = damage_split(data / "dev.tsv", damage)
    capsys.readouterr()  # the inputs' own console output
    out = run_dir / "prune" / "s0.5"
    out.mkdir(parents=True)
    (out / "metrics.json").write_text('{"sparsity": 0.5}\n')  # the output of an earlier successful run
    before = digests(tmp_path / "in", out)
    argv = ["--run-dir", str(run_dir), "--params", json.dumps(stage_params()), "--threads", "1", "--sparsity", "0.5",
            "--model-dir", str(model), "--data-dir", str(data), "--out-dir", str(out)]
    assert prune.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"prune: error: {expected}") and "\n" not in err
    run = only_child(info, "prune[s0.5]")
    assert run.info.status == "FAILED" and expected in run.data.tags["error"]
    assert run.data.tags["algorithm"] == "reweighted" and run.data.tags["sparsity"] == "0.5"
    assert digests(tmp_path / "in", out) == before and not list(out.parent.glob(".s0.5.tmp-*"))
