"""cuda_lib/gpu/ncu_summary.py: one forward's kernels out of an ncu CSV that also holds warm-up launches."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpu_scripts import load

ncu = load("ncu_summary")
METRICS = ["gpu__time_duration.sum", "sm__throughput.avg.pct_of_peak_sustained_elapsed"]


def _csv(path: Path, launches: list[tuple[str, float]]) -> Path:
    lines = ['"==PROF== Connected to process"', '"ID","Kernel Name",' + ",".join(f'"{m}"' for m in METRICS),
             '"","","usecond","%"']
    lines += [f'"{i}","{name}","{t}","50"' for i, (name, t) in enumerate(launches)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_family_drops_namespaces_templates_and_parameters():
    assert ncu.family("void et::<unnamed>::attention_short_kernel<__half, 64>(const T1 *, int)") == \
        "attention_short_kernel"
    assert ncu.family("void et::cuda::(anonymous namespace)::layernorm_kernel<__half, 4>(const T1 *)") == \
        "layernorm_kernel"
    assert ncu.family("nvjet_sm90_hsh_128x8_64x12_1x4_h_bx_bias_TNT") == "nvjet_sm90_hsh_128x8_64x12_1x4_h_bx_bias_TNT"


def test_only_the_last_forward_is_summarised(tmp_path, capsys):
    tuning = [("nvjet_a", 9.0)] * 5                          # candidate timing before the first forward
    forward = [("void et::<unnamed>::embed_layernorm_kernel<__half, 4>(int)", 2.0), ("nvjet_a", 5.0),
               ("void et::<unnamed>::pooler_kernel<__half>(int)", 3.0),
               ("void et::<unnamed>::classifier_kernel<__half>(int)", 1.0)]
    path = _csv(tmp_path / "p.csv", tuning + forward + [(n, t * 2) for n, t in forward])
    ncu.summarize(path)
    out = capsys.readouterr().out
    assert "last forward, 4 kernels, 22.0 us of kernel time" in out
    assert "nvjet_a" in out and " 10.0 " in out  # the last forward's 2 x 5 us, none of the tuning launches


def test_a_profile_without_a_whole_forward_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="classifier_kernel"):
        ncu.summarize(_csv(tmp_path / "p.csv", [("nvjet_a", 1.0)]))
