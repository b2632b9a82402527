"""Untrusted files never execute code: no pickle of outside data anywhere in the code base, and a
checkpoint that carries a pickle payload is refused without running it."""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import pytest

from reliability_util import PROJECT_ROOT

SKIP_DIRS = {".venv", ".git", ".snakemake", "results", "logs", "benchmarks", "mlruns", "mlartifacts",
             "__pycache__", ".pytest_cache", ".hypothesis"}
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def _project_files(suffixes: tuple[str, ...], names: tuple[str, ...] = ()) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(PROJECT_ROOT):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.startswith("build")]
        out += [Path(dirpath) / f for f in filenames if f.endswith(suffixes) or f in names]
    return sorted(out)


def _kw(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "?"


def unsafe_calls(source: str) -> list[str]:
    """Calls that can execute code from a file's content: pickle-family loads, torch.load without
    weights_only=True, any allow_pickle=True, yaml.load without SafeLoader, yaml.unsafe_load."""
    found = []
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            found += [f"line {node.lineno}: import {n}" for n in names if n and n.split(".")[0] in PICKLE_MODULES]
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        where = f"line {node.lineno}: {name}("
        if name.split(".")[0] in PICKLE_MODULES and name.split(".")[-1] in ("load", "loads", "Unpickler", "open"):
            found.append(where)
        if name.endswith("torch.load") or name == "load" and _kw(node, "weights_only") is not None:
            if not _is_true(_kw(node, "weights_only")):
                found.append(where + " without weights_only=True")
        if _is_true(_kw(node, "allow_pickle")):
            found.append(where + " allow_pickle=True")
        if name in ("yaml.load", "yaml.load_all"):
            loader = _kw(node, "Loader") or (node.args[1] if len(node.args) > 1 else None)
            if loader is None or "Safe" not in _dotted(loader):
                found.append(where + " without SafeLoader")
        if name in ("yaml.unsafe_load", "yaml.full_load", "yaml.unsafe_load_all"):
            found.append(where)
    return found


def test_scanner_catches_each_unsafe_pattern() -> None:
    """The scanner itself flags every pattern it is meant to (so a clean result means something)."""
    bad = ("import pickle\nfrom joblib import load\npickle.load(f)\ntorch.load(p)\n"
           "torch.load(p, weights_only=False)\nnp.load(p, allow_pickle=True)\nyaml.load(t)\n"
           "yaml.unsafe_load(t)\n")
    assert len(unsafe_calls(bad)) == 8
    good = ("torch.load(p, weights_only=True)\nnp.load(p)\nnp.load(p, allow_pickle=False)\n"
            "yaml.safe_load(t)\nyaml.load(t, Loader=yaml.SafeLoader)\njson.load(f)\n")
    assert unsafe_calls(good) == []


def test_code_base_never_unpickles() -> None:
    """Every Python file of the project (stages, library binding, tests, tools) is free of them."""
    files = _project_files((".py",))
    assert any(f.name == "tracking.py" for f in files)
    problems = {str(f.relative_to(PROJECT_ROOT)): unsafe_calls(f.read_text()) for f in files}
    assert {k: v for k, v in problems.items() if v} == {}


def test_workflow_files_never_unpickle() -> None:
    """The Snakefile and rule files (not plain Python, so scanned as text) have none either."""
    pattern = re.compile(r"pickle|torch\.load\(|allow_pickle\s*=\s*True|yaml\.(unsafe_|full_)?load\(")
    files = _project_files((".smk",), ("Snakefile",))
    assert any(f.name == "Snakefile" for f in files) and any(f.suffix == ".smk" for f in files)
    hits = {str(f.relative_to(PROJECT_ROOT)): pattern.findall(f.read_text()) for f in files}
    assert {k: v for k, v in hits.items() if v} == {}


def test_pickled_checkpoint_is_refused_without_running_it(tmp_path: Path) -> None:
    """A model folder whose only weights are a pickle that would run a shell command: loading it
    fails, and the command never ran."""
    import torch
    from transformers import BertConfig

    from pipeline_steps import modeling

    marker = tmp_path / "payload_ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=32).save_pretrained(tmp_path)
    torch.save({"bert.embeddings.word_embeddings.weight": Payload()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(Exception) as err:
        modeling.load_classifier(tmp_path, num_labels=2)
    assert not marker.exists()
    assert "weights only" in str(err.value).lower() or "weights_only" in str(err.value)


def test_checkpoints_are_saved_as_safetensors(tmp_path: Path, tiny_bert_dir: Path) -> None:
    """save_checkpoint writes safetensors and no pickle-based weight file."""
    from pipeline_steps import modeling

    model = modeling.load_classifier(tiny_bert_dir, num_labels=2)
    tokenizer = modeling.load_tokenizer(tiny_bert_dir)
    modeling.save_checkpoint(model, tokenizer, tmp_path / "model")
    names = {p.name for p in (tmp_path / "model").iterdir()}
    assert "model.safetensors" in names
    assert not names & {"pytorch_model.bin", "training_args.bin", "optimizer.pt", "scheduler.pt"}
