"""The infer stage end to end on a small pruned classifier: library, executable and PyTorch agree."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from libet_build import apply_masks, export, libet, random_bert, random_masks  # noqa: F401
from pipeline_steps import glue, infer, modeling
from stage_failures import digests, only_child, open_run_dir

WORDS = "the a cat dog sat on mat ran fast slow red blue house tree river stone light dark".split()


@pytest.fixture(scope="module")
def run_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("infer")
    tokenizer = modeling.load_tokenizer(modeling.EMBEDDED_MODEL)
    model = random_bert(seed=71, vocab=tokenizer.vocab_size, hidden=64, heads=4, intermediate=128, max_positions=64,
                        labels=2)
    masks = random_masks(model, seed=71, density=0.6)
    apply_masks(model, masks)
    modeling.save_checkpoint(model, tokenizer, root / "model")
    manifest = export(model, root / "npy", masks)
    data = root / "data"
    data.mkdir()
    (data / glue.TASK_FILE).write_text(json.dumps({"task": "mrpc"}))
    rng = np.random.default_rng(0)
    sentence = lambda: " ".join(rng.choice(WORDS, size=int(rng.integers(1, 25))))  # noqa: E731
    examples = [glue.Example(sentence(), sentence(), float(rng.integers(0, 2))) for _ in range(45)]
    glue.write_split(data / "dev.tsv", glue.TASKS["mrpc"], examples)
    return root, manifest


def test_infer_stage(libet, run_inputs, mlflow_uri):
    root, manifest = run_inputs
    params = {"model": {"max_seq_length": 48}, "infer": {"backend": "auto", "batch_size": 8}}
    out = root / "out"
    assert infer.main(["--params", json.dumps(params), "--threads", "2", "--sparsity", "0.4", "--lib", str(libet.lib),
                       "--exe", str(libet.exe), "--manifest", str(manifest), "--model-dir", str(root / "model"),
                       "--data-dir", str(root / "data"), "--out-dir", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["backend"] == "cpu" and m["device"]
    assert m["prediction_agreement"] == 1.0
    assert m["accuracy"] == m["torch_accuracy"]
    assert m["max_abs_logit_diff"] <= 1e-4 * max(1.0, float(np.abs(np.load(out / "logits.npy")).max()))
    assert m["exe_max_abs_diff"] == 0.0
    assert m["examples"] == 45 and m["latency_ms"] > 0 and m["tokens_per_s"] > 0
    assert {"f1", "exe_latency_ms", "sparsity"} <= set(m)
    assert np.load(out / "logits.npy").shape == (45, 2)
    assert sorted(p.name for p in out.iterdir()) == ["logits.npy", "metrics.json"]


def _infer_argv(root, manifest, lib, exe, run_dir, out) -> list[str]:
    params = {"model": {"max_seq_length": 48}, "infer": {"backend": "cpu", "batch_size": 8}}
    return ["--run-dir", str(run_dir), "--params", json.dumps(params), "--sparsity", "0.4", "--lib", str(lib),
            "--exe", str(exe), "--manifest", str(manifest), "--model-dir", str(root / "model"), "--data-dir",
            str(root / "data"), "--out-dir", str(out)]


def test_infer_fails_without_outputs_on_a_broken_executable(libet, run_inputs, mlflow_uri, tmp_path, capsys):
    """et_infer exits non-zero: one error line naming the exit code and its message, exit 1, the branch's
    MLflow run FAILED with the same message, no output, the inputs untouched."""
    root, manifest = run_inputs
    fake = tmp_path / "et_infer"
    fake.write_text("#!/bin/sh\necho 'simulated failure' >&2\nexit 3\n")
    fake.chmod(0o755)
    run_dir, info = open_run_dir(tmp_path)
    before = digests(root / "model", root / "npy", root / "data")
    out = run_dir / "infer" / "s0.4"
    assert infer.main(_infer_argv(root, manifest, libet.lib, fake, run_dir, out)) == 1
    err = capsys.readouterr().err
    assert "infer: error: et_infer failed with exit code 3: simulated failure" in err and "Traceback" not in err
    run = only_child(info, "infer[s0.4]")
    assert run.info.status == "FAILED" and "et_infer failed with exit code 3" in run.data.tags["error"]
    assert not out.exists() and not list(out.parent.glob(".s0.4.tmp-*"))
    assert digests(root / "model", root / "npy", root / "data") == before


def test_infer_reports_a_library_error_naming_tensor_shape_and_manifest(libet, run_inputs, mlflow_uri, tmp_path,
                                                                      capsys):
    """An export whose weight file disagrees with its manifest: libet's message (file, tensor, shapes) in one
    error paragraph that also names the stage and the manifest; exit 1; FAILED run; earlier outputs untouched."""
    root, manifest = run_inputs
    bad = tmp_path / "npy"
    shutil.copytree(manifest.parent, bad)
    pooler = bad / "bert.pooler.dense.weight.npy"
    np.save(pooler, np.load(pooler)[:, :32])
    run_dir, info = open_run_dir(tmp_path)
    out = run_dir / "infer"
    out.mkdir(parents=True)
    (out / "metrics.json").write_text('{"accuracy": 0.5}\n')  # an earlier successful run's output
    before = digests(root, out)
    assert infer.main(_infer_argv(root, bad / manifest.name, libet.lib, libet.exe, run_dir, out)) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"infer: error: libet ({libet.lib}) failed on the model of {bad / manifest.name}: ")
    assert f"{pooler}: shape [64,32] but the manifest declares [64,64] for 'bert.pooler.dense.weight'" in err
    assert "\n" not in err and "Traceback" not in err
    run = only_child(info, "infer[s0.4]")
    assert run.info.status == "FAILED" and "bert.pooler.dense.weight" in run.data.tags["error"]
    assert digests(root, out) == before
