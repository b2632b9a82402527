"""Loading, preset merging and schema validation of ``config.yaml``."""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import jsonschema
import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = PROJECT_ROOT / "config.yaml"
SCHEMA_PATH = PROJECT_ROOT / "workflow" / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """A configuration problem; the message names the offending key."""


def deep_merge(base: dict, override: dict) -> dict:
    """Return ``base`` with ``override`` merged in recursively (dicts merge, other values replace)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_preset(config: dict) -> dict:
    """Merge ``presets[config['preset']]`` over the config; ``default`` changes nothing."""
    preset = config.get("preset", "default")
    presets = config.get("presets") or {}
    if preset == "default":
        return copy.deepcopy(config)
    if preset not in presets:
        known = ", ".join(["default", *sorted(presets)])
        raise ConfigError(f"preset: unknown preset {preset!r} (known: {known})")
    merged = deep_merge(config, presets[preset])
    merged["preset"] = preset
    return merged


def _key_path(error: jsonschema.ValidationError) -> str:
    path = ".".join(str(p) for p in error.absolute_path)
    return path or "<top level>"


def validate(config: dict) -> None:
    """Check ``config`` against the JSON schema; raise ConfigError naming the first bad key."""
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if not errors:
        _check_semantics(config)
        return
    err = errors[0]
    if err.validator == "additionalProperties":
        extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
        where = _key_path(err)
        prefix = "" if where == "<top level>" else where + "."
        raise ConfigError(f"unknown config key {prefix}{extra[0]!r}: not in the schema ({SCHEMA_PATH.name})")
    raise ConfigError(f"config key {_key_path(err)}: {err.message}")


def looks_like_local_path(name: str) -> bool:
    """True when a model name is meant as a local folder (``/…``, ``./…``, ``~/…``, or more than one ``/``)."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name


def _check_semantics(config: dict) -> None:
    """Checks the schema cannot express."""
    model = config["model"]["name_or_path"]
    if looks_like_local_path(model) and not Path(model).expanduser().is_dir():
        raise ConfigError(f"config key model.name_or_path: {model!r} is not an existing folder")
    data = config["data"]
    if data["source"] == "synthetic" and data["task"] != "mrpc":
        raise ConfigError("config key data.task: the synthetic source is an MRPC-format paraphrase task; "
                          f"use task: mrpc (got {data['task']!r}) or another data.source")
    if data["source"] == "local" and not data["local_dir"]:
        raise ConfigError("config key data.local_dir: required when data.source is 'local'")
    tr, tc = config["prune"]["tile"]
    if tr % 8 or tc % 8:
        raise ConfigError(f"config key prune.tile: {tr}x{tc} is not a multiple of 8 in both dimensions")


def load_config(path: Path | str = DEFAULT_CONFIG, overrides: dict[str, Any] | None = None) -> dict:
    """Read a config file, apply ``overrides`` (deep-merged) and the preset, then validate."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read config: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    config = apply_preset(deep_merge(raw, overrides or {}))
    validate(config)
    return config


def config_hash(config: dict) -> str:
    """A short stable hash of a config (presets excluded), for MLflow tags."""
    body = {k: v for k, v in config.items() if k != "presets"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:12]
