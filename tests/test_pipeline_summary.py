"""cuda_lib/gpu/pipeline_summary.py: the GPU parity verdict printed after a device run of the DAG."""

from __future__ import annotations

import json

from gpu_scripts import load

pipeline_summary = load("pipeline_summary")


def _infer(**kw) -> dict:
    return {"backend": "cuda", "device": "NVIDIA H100 80GB HBM3", "prediction_agreement": 0.996, "accuracy": 0.951,
            "torch_accuracy": 0.952, "max_abs_logit_diff": 0.01, "latency_ms": 0.5, **kw}


def test_parity_bar():
    assert pipeline_summary.parity(_infer())[0]
    assert not pipeline_summary.parity(_infer(backend="cpu"))[0]
    assert not pipeline_summary.parity(_infer(prediction_agreement=0.994))[0]
    assert not pipeline_summary.parity(_infer(accuracy=0.949))[0]  # 0.3 points from PyTorch's
    assert "agreement=0.9960" in pipeline_summary.parity(_infer())[1]


def test_main_reads_run_folders(tmp_path, capsys):
    run = tmp_path / "minilm-gpu"
    run.mkdir()
    summary = {"run_name": "minilm-gpu", "finetune": {"accuracy": 0.96, "device": "cuda", "train_seconds": 20.0},
               "build_lib": {"backend": "cuda"}, "bench": {"gpu": 1.0, "speedup_vs_compile": 1.2},
               "sweep": {"0.5": {"retrain": {"accuracy": 0.95}, "infer": _infer()},
                         "0.8": {"retrain": {"accuracy": 0.94}, "infer": _infer(prediction_agreement=0.99)}}}
    (run / "summary.json").write_text(json.dumps(summary))
    assert pipeline_summary.main([str(run)]) == 1  # s0.8 fails the agreement bar
    out = capsys.readouterr().out
    assert "s0.5: infer PASS" in out and "s0.8: infer FAIL" in out and "speedup_vs_compile=1.2" in out
    assert pipeline_summary.main([str(tmp_path / "missing")]) == 1
    assert "no summary.json" in capsys.readouterr().out
