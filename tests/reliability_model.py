"""A tiny exported model for the weights, inference-input and fuzz tests: one layer, hidden 32, two
heads, 16x16 tiles with about half kept, one pruned head; loadable by libet in microseconds.

Test modules import the fixtures: ``from reliability_model import tiny_export  # noqa: F401``
(which also brings ``libet`` from ``libet_build``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from libet_build import apply_masks, export, libet, random_bert, random_masks  # noqa: F401

TINY = {"layers": 1, "hidden": 32, "heads": 2, "intermediate": 64, "vocab": 50, "max_positions": 16, "labels": 2}


def write_tiny_export(out_dir: Path) -> Path:
    """Export the tiny random model (tile-pruned, one pruned head) into ``out_dir``; the manifest path."""
    model = random_bert(7, **TINY)
    masks = random_masks(model, 7, tile=(16, 16), density=0.5)
    apply_masks(model, masks)
    return export(model, Path(out_dir), masks)


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory) -> Path:
    """The folder of the tiny export (read-only by convention: copy it with :func:`copy_export`)."""
    out = tmp_path_factory.mktemp("tiny_export")
    write_tiny_export(out)
    return out


def copy_export(src: Path, dst: Path) -> Path:
    """A private copy of an export folder; returns the copied manifest path."""
    shutil.copytree(src, dst)
    return dst / "weights.txt"
