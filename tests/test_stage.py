"""stage.py: command line, seeding, atomic outputs, JSON helpers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline_steps import stage


def test_base_parser_defaults_and_params_json():
    args = stage.base_parser("x").parse_args(["--params", '{"a": {"b": 1}}', "--threads", "2"])
    assert args.params == {"a": {"b": 1}} and args.threads == 2 and args.seed == 13 and args.run_dir is None


def test_setup_runtime_seeds_everything():
    stage.setup_runtime(1, 42)
    a = (np.random.rand(), torch.rand(1).item())
    stage.setup_runtime(1, 42)
    assert (np.random.rand(), torch.rand(1).item()) == a
    assert torch.get_num_threads() == 1


def test_atomic_dir_replaces_only_on_success(tmp_path):
    final = tmp_path / "out"
    with stage.atomic_dir(final) as tmp:
        (tmp / "a.txt").write_text("1")
        assert not final.exists()
    assert (final / "a.txt").read_text() == "1"
    with pytest.raises(RuntimeError):
        with stage.atomic_dir(final) as tmp:
            (tmp / "a.txt").write_text("2")
            raise RuntimeError("boom")
    assert (final / "a.txt").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary left behind
    with stage.atomic_dir(final) as tmp:
        (tmp / "b.txt").write_text("3")
    assert sorted(p.name for p in final.iterdir()) == ["b.txt"]


def test_json_round_trip_and_named_errors(tmp_path):
    stage.write_json(tmp_path / "sub" / "m.json", {"b": 1, "a": 0.5})
    assert stage.read_json(tmp_path / "sub" / "m.json") == {"a": 0.5, "b": 1}
    assert list(json.loads((tmp_path / "sub" / "m.json").read_text())) == ["a", "b"]
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json: cannot read JSON"):
        stage.read_json(tmp_path / "bad.json")
    stage.write_text(tmp_path / "r.md", "# hi\n")
    assert (tmp_path / "r.md").read_text() == "# hi\n"
