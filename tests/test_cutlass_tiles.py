"""cuda_lib/gpu/cutlass_tiles.py and .cu: the configuration table and one configuration's build (no GPU needed)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from gpu_scripts import GPU_DIR, load

tiles = load("cutlass_tiles")


def _table() -> list[tuple[int, int, int, int, str]]:
    """(tile features, tile rows, cluster features, cluster rows, schedule) of each entry of the .cu's Table."""
    text = (GPU_DIR / "cutlass_tiles.cu").read_text()
    body = text[text.index("using Table = cute::tuple<"):text.index("using C = ")]
    return [(int(a), int(b), int(c), int(d), sched)
            for a, b, c, d, sched in re.findall(r"Cfg<(\d+), (\d+), (\d+), (\d+), (\w+), \w+>", body)]


def test_names_follow_the_table():
    """NAMES[i] describes entry i of the .cu's table: its tile, its cluster when not 1x1, its schedule."""
    table = _table()
    assert len(table) == len(tiles.NAMES) == 10
    word = {"WS": "ws", "Coop": "coop", "Ping": "ping"}
    for name, (tm, tn, cm, cn, sched) in zip(tiles.NAMES, table):
        expected = f"{tm}x{tn} {word[sched]}" + ("" if (cm, cn) == (1, 1) else f" c{cm}x{cn}")
        assert name == expected


def test_gemm_shapes_are_bert_base():
    assert tiles.GEMMS == {"qkv": (2304, 768), "o": (768, 768), "ffn1": (3072, 768), "ffn2": (768, 3072)}


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
def test_one_configuration_compiles(tmp_path):
    """Configuration 1 (128 x 128 cooperative) builds for sm_90a with the nvidia-cutlass headers, and exports
    its entry point."""
    include = tiles.cutlass_include()
    if include is None:
        pytest.skip("nvidia-cutlass headers not installed")
    obj = tmp_path / "cfg1.o"
    run = subprocess.run(tiles.nvcc_command(1, obj, include), capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    nm = shutil.which("nm")
    if nm:
        symbols = subprocess.run([nm, str(obj)], capture_output=True, text=True).stdout
        assert " T et_tile_gemm_1" in symbols
