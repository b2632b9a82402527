"""cuda_lib/gpu/import_run.py: a GPU run tarball becomes docs/gpu-run/<run>/ and the README's generated block."""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path

import pytest

from gpu_scripts import load

import_run = load("import_run")

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16
README = "# project\n\nintro\n\n<!-- gpu-run:begin -->\nstale text\n<!-- gpu-run:end -->\n\n## after\n"


def _infer(acc: float) -> dict:
    return {"backend": "cuda", "device": "Fake GPU 9000", "prediction_agreement": 1.0, "accuracy": acc,
            "torch_accuracy": acc, "max_abs_logit_diff": 0.01, "latency_ms": 1.0, "pruned_heads": 7}


def _bench_rows() -> list[dict]:
    rows = []
    for system, sparsity, ms in [("hf-eager", 0.0, 4.0), ("hf-sdpa", 0.0, 3.0), ("hf-compile-max-autotune", 0.0, 0.5),
                                 ("et-cuda-packed", 0.0, 0.25), ("et-cuda-packed", 0.5, 0.2)]:
        rows.append({"model": "pipeline", "batch": 32, "seq": 40, "lengths": "dev", "system": system,
                     "sparsity": sparsity, "ms_median": ms})
    return rows


def _files(run: str, report: str) -> dict[str, bytes]:
    summary = {"run_name": run, "finetune": {"accuracy": 0.95},
               "sweep": {"0.5": {"retrain": {"accuracy": 0.94, "accuracy_drop": 0.01}, "infer": _infer(0.94)}}}
    r = f"results/{run}/"
    return {
        r + "summary.json": json.dumps(summary).encode(),
        r + "report.md": report.encode(),
        r + "accuracy_vs_sparsity.png": PNG,
        r + "bench/latency_vs_batch.png": PNG,
        r + "bench/speedup_vs_sparsity.png": PNG,
        r + "bench/bench.csv": b"batch,system\n32,et-cuda-packed\n",
        r + "bench/bench.json": json.dumps({"meta": {"gpu": True, "device": "Fake GPU 9000"},
                                            "rows": _bench_rows()}).encode(),
        r + "bench/metrics.json": b'{"headline_ms": 0.25}',
        r + "finetune/metrics.json": b'{"accuracy": 0.95}',
        r + "retrain/s0.5/metrics.json": b'{"accuracy": 0.94}',
        r + "build_lib/build.log": b"not imported",
        f"logs/{run}/finetune.log": b"not imported",
        f"tmp/et-gpu-{run}.yaml": f"run_name: {run}\nprune:\n  algorithm: admm\n".encode(),
    }


def _tarball(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_764_045_000
            tar.addfile(info, io.BytesIO(data))
    return path


REPORT = ("# run\n\n![accuracy vs sparsity](accuracy_vs_sparsity.png)\n\n"
          "![latency](bench/latency_vs_batch.png)\n\n"
          "![speedup](/work/main/results/fake/bench/speedup_vs_sparsity.png)\n\n[site](https://example.org/x.png)\n")


def _run(tmp_path: Path, report: str = REPORT, readme: str = README) -> tuple[int, Path, Path, Path]:
    tgz = _tarball(tmp_path / "fake.tgz", _files("fake", report))
    docs, readme_path = tmp_path / "docs" / "gpu-run", tmp_path / "README.md"
    readme_path.write_text(readme)
    rc = import_run.main([str(tgz), "--docs-dir", str(docs), "--readme", str(readme_path), "--commit", "abc1234"])
    return rc, docs, readme_path, tgz


def test_layout_links_source_and_readme_block(tmp_path):
    rc, docs, readme, _ = _run(tmp_path)
    assert rc == 0
    out = docs / "fake"
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        "SOURCE.md", "accuracy_vs_sparsity.png", "bench/bench.csv", "bench/bench.json", "bench/latency_vs_batch.png",
        "bench/speedup_vs_sparsity.png", "metrics/bench.json", "metrics/finetune.json", "metrics/retrain_s0.5.json",
        "report.md", "source.json", "summary.json"]
    report = (out / "report.md").read_text()
    targets = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert targets == ["accuracy_vs_sparsity.png", "bench/latency_vs_batch.png", "bench/speedup_vs_sparsity.png"]
    assert all((out / t).read_bytes() == PNG for t in targets)
    assert "(https://example.org/x.png)" in report
    source = (out / "SOURCE.md").read_text()
    assert "bash cuda_lib/gpu/run_all.sh pipeline" in source and "abc1234" in source
    assert "Fake GPU 9000" in source and "prune algorithm: admm" in source

    text = readme.read_text()
    assert text.startswith("# project\n\nintro\n\n<!-- gpu-run:begin -->") and text.endswith("<!-- gpu-run:end -->\n\n## after\n")
    assert "stale text" not in text
    assert ("| [fake](docs/gpu-run/fake/report.md) | admm | 50% | 0.950 | 0.940 (-1.0 pt) | cuda | 1.0000 | "
            "0.940 / 0.940 | PASS |") in text
    assert "our dense padding-free engine **0.250 ms** vs torch.compile max-autotune 0.500 ms (2.00x)" in text
    assert "50% 0.200 ms (1.25x of dense; 7 heads pruned)" in text and "not faster" not in text


def test_reimport_replaces_the_run_folder(tmp_path):
    _, docs, readme, tgz = _run(tmp_path)
    first = readme.read_text()
    (docs / "fake" / "leftover.txt").write_text("from an older import")
    assert import_run.main([str(tgz), "--docs-dir", str(docs), "--readme", str(readme), "--commit", "abc1234"]) == 0
    assert not (docs / "fake" / "leftover.txt").exists()
    assert readme.read_text() == first


def test_image_link_to_a_file_not_in_the_tarball_fails_and_writes_nothing(tmp_path, capsys):
    rc, docs, readme, _ = _run(tmp_path, report="![plot](bench/missing.png)\n")
    assert rc == 1
    assert "bench/missing.png" in capsys.readouterr().err
    assert not docs.exists() and readme.read_text() == README


def test_readme_without_markers_fails_before_writing(tmp_path, capsys):
    rc, docs, readme, _ = _run(tmp_path, readme="# project\n")
    assert rc == 1
    assert "gpu-run:begin" in capsys.readouterr().err and not docs.exists()


def test_tarball_without_a_run_summary_is_named(tmp_path, capsys):
    tgz = _tarball(tmp_path / "empty.tgz", {"logs/x.log": b"x"})
    assert import_run.main([str(tgz), "--docs-dir", str(tmp_path / "d"), "--no-readme"]) == 1
    assert "empty.tgz" in capsys.readouterr().err and not (tmp_path / "d").exists()


@pytest.mark.parametrize("rel, dest", [("finetune/metrics.json", "metrics/finetune.json"),
                                       ("infer/s0.8/metrics.json", "metrics/infer_s0.8.json"),
                                       ("bench/bench.json", "bench/bench.json"),
                                       ("build_lib/build.log", None), ("finetune/model/config.json", None)])
def test_destination(rel, dest):
    assert import_run.destination(rel) == dest


def test_bench_headline_says_when_pruned_models_are_slower():
    rows = _bench_rows()
    rows[-1]["ms_median"] = 0.3  # 50% sparse slower than the dense 0.25 ms
    lines = import_run.bench_headline("fake", {"meta": {"gpu": True, "device": "Fake GPU 9000"}, "rows": rows},
                                      "docs/gpu-run")
    assert "50% 0.300 ms (0.83x of dense)" in lines[1] and "not faster than the dense one" in lines[1]
    assert "batch 32 of dev-set lengths, longest 40" in lines[0]
