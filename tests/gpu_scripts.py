"""Import a script of ``cuda_lib/gpu/`` (not a package) as a module, for its tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

GPU_DIR = Path(__file__).resolve().parents[1] / "cuda_lib" / "gpu"


def load(name: str) -> ModuleType:
    """``cuda_lib/gpu/<name>.py`` as module ``name``, registered in ``sys.modules`` (dataclasses look it up)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, GPU_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
