"""The retrain stage: masks fixed bit-exactly through training, metrics, distillation, bad input."""

from __future__ import annotations

import json

import pytest
import torch

from pipeline_steps import modeling, prune, retrain
from pipeline_steps.masking import element_masks, mask_violations
from pipeline_steps.tiles import ModelMasks, TileLayout
from pruning_fixtures import stage_inputs, stage_params
from stage_failures import damage_split, digests, only_child, open_run_dir


@pytest.fixture
def pruned(tmp_path, mlflow_uri):
    model, data, ft_metrics = stage_inputs(tmp_path / "in")
    out = tmp_path / "prune"
    argv = ["--run-dir", str(tmp_path / "run"), "--params", json.dumps(stage_params()), "--threads", "1",
            "--sparsity", "0.6", "--model-dir", str(model), "--data-dir", str(data), "--out-dir", str(out)]
    assert prune.main(argv) == 0
    return {"teacher": model, "data": data, "ft": ft_metrics, "prune": out, "tmp": tmp_path}


def _retrain(p, params, out_name="retrain", masks=None):
    out = p["tmp"] / out_name
    argv = ["--run-dir", str(p["tmp"] / "run"), "--params", json.dumps(params), "--threads", "1", "--seed", "13",
            "--sparsity", "0.6", "--model-dir", str(p["prune"] / "model"), "--masks", str(masks or p["prune"] / "masks.json"),
            "--teacher-dir", str(p["teacher"]), "--finetune-metrics", str(p["ft"]), "--data-dir", str(p["data"]),
            "--out-dir", str(out)]
    return retrain.main(argv), out


@pytest.mark.parametrize("distill", [True, False])
def test_retrain_keeps_masks_bit_exact_and_reports_metrics(pruned, distill):
    params = stage_params()
    params["retrain"]["distill"]["enabled"] = distill
    rc, out = _retrain(pruned, params)
    assert rc == 0
    before = modeling.load_classifier(pruned["prune"] / "model")
    after = modeling.load_classifier(out / "model")
    masks = ModelMasks.load(out / "masks.json")
    assert (out / "masks.json").read_text() == (pruned["prune"] / "masks.json").read_text()
    emasks = element_masks(after, masks)
    assert mask_violations(after, emasks) == {}
    b, a = dict(before.named_parameters()), dict(after.named_parameters())
    for name, m in emasks.items():
        assert torch.all(a[name].detach()[~m] == 0) and torch.all(b[name].detach()[~m] == 0)
        assert not torch.equal(a[name].detach()[m], b[name].detach()[m])  # kept weights were trained
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("accuracy", "f1", "weight_sparsity", "tile_sparsity", "heads_pruned", "accuracy_drop", "sparsity",
                "encoder_flops_per_token", "dense_encoder_flops_per_token"):
        assert key in metrics, key
    assert metrics["accuracy_drop"] == pytest.approx(0.75 - metrics["accuracy"])
    prune_metrics = json.loads((pruned["prune"] / "metrics.json").read_text())
    assert metrics["tile_sparsity"] == prune_metrics["tile_sparsity"]
    assert metrics["weight_sparsity"] >= metrics["tile_sparsity"] - 1e-9


def test_retrain_rejects_a_model_that_violates_its_masks(pruned, capsys):
    masks = ModelMasks.load(pruned["prune"] / "masks.json")
    name = sorted(masks.layouts)[0]
    lay = masks.layouts[name]
    fewer = TileLayout(lay.shape, lay.tile, lay.kept[1:])  # a kept, non-zero tile is now declared removed
    bad = pruned["tmp"] / "bad_masks.json"
    ModelMasks({**masks.layouts, name: fewer}, masks.pruned_heads).save(bad)
    rc, out = _retrain(pruned, stage_params(), "bad", masks=bad)
    assert rc == 1 and not out.exists()
    assert "non-zero outside" in capsys.readouterr().err


def test_retrain_needs_a_teacher_for_distillation(pruned, capsys):
    p = dict(pruned)
    argv_params = stage_params()
    out = p["tmp"] / "nt"
    argv = ["--run-dir", str(p["tmp"] / "run"), "--params", json.dumps(argv_params), "--sparsity", "0.6",
            "--model-dir", str(p["prune"] / "model"), "--masks", str(p["prune"] / "masks.json"),
            "--data-dir", str(p["data"]), "--out-dir", str(out)]
    assert retrain.main(argv) == 1 and not out.exists()
    assert "--teacher-dir" in capsys.readouterr().err


def test_missing_dev_split_fails_the_branch_run_and_keeps_earlier_outputs(tmp_path, mlflow_uri, capsys):
    """dev.tsv lost after pruning: exit 1 with one error line naming the file, the retrain[s0.6] child run
    FAILED with the same message (it opens before the data is read), the earlier stages' outputs unchanged."""
    model, data, ft_metrics = stage_inputs(tmp_path / "in")
    masks = tmp_path / "in" / "masks.json"
    ModelMasks({}, {}).save(masks)  # the dense model: nothing removed
    run_dir, info = open_run_dir(tmp_path)
    expected = damage_split(data / "dev.tsv", "missing")
    capsys.readouterr()  # the inputs' own console output
    before = digests(tmp_path / "in")
    out = run_dir / "retrain" / "s0.6"
    argv = ["--run-dir", str(run_dir), "--params", json.dumps(stage_params()), "--threads", "1", "--sparsity", "0.6",
            "--model-dir", str(model), "--masks", str(masks), "--teacher-dir", str(model),
            "--finetune-metrics", str(ft_metrics), "--data-dir", str(data), "--out-dir", str(out)]
    assert retrain.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"retrain: error: {expected}") and "\n" not in err
    run = only_child(info, "retrain[s0.6]")
    assert run.info.status == "FAILED" and expected in run.data.tags["error"]
    assert digests(tmp_path / "in") == before and not out.exists()


def test_hidden_state_distillation_is_zero_against_itself_and_positive_otherwise():
    from pipeline_steps.distillation import distillation_loss, hidden_states_on
    from pruning_fixtures import random_batches, tiny_bert

    teacher, student = tiny_bert(seed=0), tiny_bert(seed=0).eval()  # no dropout: identical outputs
    batch = random_batches(n_batches=1)[0]
    extra = distillation_loss(teacher, alpha=0.0, temperature=2.0, regression=False, hidden_weight=1.0)
    with hidden_states_on(student):
        term, logs = extra(student, batch, student(**batch))
    assert float(term.detach()) == pytest.approx(0.0, abs=1e-10) and logs["train.hidden_distill_loss"] == pytest.approx(0.0)
    assert student.config.output_hidden_states is False
    with torch.no_grad():
        student.bert.encoder.layer[0].output.dense.weight.mul_(0.5)
    with hidden_states_on(student):
        term, logs = extra(student, batch, student(**batch))
    assert logs["train.hidden_distill_loss"] > 0 and float(term.detach()) > 0
    with pytest.raises(RuntimeError, match="hidden states"):
        extra(student, batch, student(**batch))
