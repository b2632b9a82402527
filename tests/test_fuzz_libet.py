"""Bounded Hypothesis fuzzing of libet's .npy reader and manifest parser through the cffi binding.

Each target runs in a child process (tests/reliability_fuzz_driver.py), so a segfault or abort
shows up as a failed test with the signal named, and a hang as a timeout. The seed is random per
run and printed; ``ET_FUZZ_SEED`` replays one, ``ET_FUZZ_EXAMPLES`` changes the budget.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
from pathlib import Path

import pytest

from reliability_model import libet, tiny_export  # noqa: F401
from reliability_util import PROJECT_ROOT, PYTHON, subprocess_env

EXAMPLES = int(os.environ.get("ET_FUZZ_EXAMPLES", "1000"))
TIMEOUT_S = 240


def run_guarded(args: list[str], timeout: float) -> tuple[int, str]:
    """Run ``python <args>``; return (exit code, output). A signal death becomes a readable failure."""
    try:
        proc = subprocess.run([PYTHON, *args], capture_output=True, text=True, timeout=timeout, env=subprocess_env())
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"hang: no result within {timeout} s\n{(exc.stdout or b'')[-2000:]!r}")
    output = proc.stdout + proc.stderr
    if proc.returncode < 0:
        pytest.fail(f"crashed with {signal.Signals(-proc.returncode).name}\n{output[-4000:]}")
    return proc.returncode, output


@pytest.mark.parametrize("target", ["npy", "manifest"])
def test_fuzz_never_crashes_or_hangs(target: str, tmp_path: Path, libet, tiny_export) -> None:
    """Every fuzzed file gives a successful load or a known status with a message naming the folder."""
    seed = int(os.environ.get("ET_FUZZ_SEED", random.randrange(2**31)))
    code, output = run_guarded(
        [str(PROJECT_ROOT / "tests" / "reliability_fuzz_driver.py"), "--lib", str(libet.lib), "--model",
         str(tiny_export), "--target", target, "--examples", str(EXAMPLES), "--seed", str(seed), "--work", str(tmp_path)],
        TIMEOUT_S)
    assert code == 0, f"property violated (replay with ET_FUZZ_SEED={seed}):\n{output[-6000:]}"
    summary = json.loads(output.strip().splitlines()[-1])
    assert summary["examples"] >= EXAMPLES * 0.9  # Hypothesis may stop early only when it exhausts the space
    outcomes = dict(summary["outcomes"])
    assert outcomes.get("format error", 0) > 0  # the fuzzer reached the validation code
    print(f"fuzz {target}: seed {seed}, {summary['examples']} examples, outcomes {outcomes}")


def test_guard_reports_a_crash_as_a_failure() -> None:
    """The guard itself: a child that segfaults fails the test with the signal's name."""
    with pytest.raises(pytest.fail.Exception, match="crashed with SIGSEGV"):
        run_guarded(["-c", "import ctypes; ctypes.string_at(0)"], 60)
