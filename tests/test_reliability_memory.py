"""Out of memory in the engine (CPU backend, host memory): a batch too large for the address-space
limit gets ET_ERR_OUT_OF_MEMORY with a message, the process keeps running, and a small batch
afterwards gives the same logits as before. (The GPU case is cuda_lib/gpu/check.py's ``oom_case``.)"""

from __future__ import annotations

from pathlib import Path

from reliability_model import libet, tiny_export  # noqa: F401
from reliability_util import run_python

CHILD = """
import resource, sys
import numpy as np
from pipeline_steps.engine import Engine, EngineError
eng = Engine(sys.argv[1], sys.argv[2], backend="cpu", threads=2)
small = (np.array([1, 2, 3], np.int32), np.array([3], np.int32))
before = eng.forward(*small)
batch = 400_000  # 6.4 M tokens: each [tokens, hidden] float32 activation needs 819 MB
lengths = np.full(batch, 16, np.int32)
tokens = np.ones(batch * 16, np.int32)
vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + 600 * 2**20, resource.RLIM_INFINITY))
try:
    eng.forward(tokens, lengths)
    print("BIG BATCH RAN")
except EngineError as err:
    print(f"status={err.status} message={err}")
after = eng.forward(*small)
print("same_small_logits", bool(np.array_equal(before, after)))
"""


def test_host_out_of_memory_is_a_status_and_the_model_stays_usable(libet, tiny_export) -> None:
    """Address space capped 600 MB above the current use, then a 6.4 M-token batch: status 5
    ("out of memory"), no crash, and the next small batch matches the logits from before."""
    proc = run_python(["-c", CHILD, str(libet.lib), str(Path(tiny_export) / "weights.txt")], timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "status=5 message=out of memory: et_forward: out of host memory" in proc.stdout, proc.stdout
    assert "same_small_logits True" in proc.stdout
