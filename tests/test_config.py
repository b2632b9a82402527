"""config.py + config.yaml + schema: presets, validation messages naming the key, hashing, pinned environments."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from pipeline_steps import config as cfgmod
from pipeline_steps.config import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_default_config_is_valid_and_smoke_preset_shrinks_it():
    default = cfgmod.load_config()
    smoke = cfgmod.load_config(overrides={"preset": "smoke"})
    assert default["preset"] == "default" and smoke["preset"] == "smoke"
    assert default["data"]["synthetic"]["n_train"] >= 5000 and default["data"]["synthetic"]["n_dev"] >= 1000
    assert smoke["data"]["synthetic"]["n_train"] < default["data"]["synthetic"]["n_train"]
    assert smoke["finetune"]["epochs"] == 1 and smoke["model"]["max_seq_length"] <= 64
    assert smoke["finetune"]["learning_rate"] == default["finetune"]["learning_rate"]  # untouched keys stay


def test_deep_merge_does_not_touch_its_inputs():
    base = {"a": {"b": 1, "c": [1]}, "d": 2}
    out = cfgmod.deep_merge(base, {"a": {"b": 5}})
    assert out == {"a": {"b": 5, "c": [1]}, "d": 2} and base["a"]["b"] == 1


@pytest.mark.parametrize("overrides, message", [
    ({"finetune": {"epoch": 3}}, "unknown config key finetune.'epoch'"),
    ({"colour": "red"}, "unknown config key 'colour'"),
    ({"finetune": {"epochs": "three"}}, "config key finetune.epochs: 'three' is not of type 'integer'"),
    ({"finetune": {"learning_rate": 0}}, "config key finetune.learning_rate"),
    ({"data": {"task": "squad"}}, "config key data.task"),
    ({"prune": {"sweep": [0.5, 1.0]}}, "config key prune.sweep.1"),
    ({"data": {"source": "local"}}, "config key data.local_dir: required"),
    ({"data": {"task": "sst2"}}, "config key data.task: the synthetic source is an MRPC-format"),
    ({"preset": "tiny"}, "preset: unknown preset 'tiny'"),
    ({"model": {"name_or_path": "/no/such/dir"}}, "config key model.name_or_path: '/no/such/dir'"),
])
def test_bad_values_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        cfgmod.load_config(overrides=overrides)


def test_unreadable_config_file(tmp_path):
    (tmp_path / "c.yaml").write_text("- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        cfgmod.load_config(tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match="cannot read config"):
        cfgmod.load_config(tmp_path / "missing.yaml")


def test_config_hash_is_stable_and_ignores_presets():
    a = cfgmod.load_config()
    b = cfgmod.load_config()
    b["presets"] = {}
    assert cfgmod.config_hash(a) == cfgmod.config_hash(b)
    b["seed"] += 1
    assert cfgmod.config_hash(a) != cfgmod.config_hash(b)


def _pins(lines) -> dict[str, str]:
    pins = {}
    for line in lines:
        line = line.strip().lstrip("- ").strip()
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower()] = version
    return pins


def test_environment_yml_pins_match_requirements():
    """environment.yml pins what requirements.txt and requirements-nodeps.txt pin, nothing else."""
    req = _pins((ROOT / "requirements.txt").read_text().splitlines())
    req.update(_pins((ROOT / "requirements-nodeps.txt").read_text().splitlines()))
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert _pins(pip_section) == req
    assert "python=3.11" in env["dependencies"] and req["torch"] == "2.13.0"
    assert (ROOT / "workflow" / "envs" / "et.yaml").resolve() == (ROOT / "environment.yml").resolve()
