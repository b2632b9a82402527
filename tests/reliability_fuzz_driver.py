"""Hypothesis fuzzer of libet's .npy reader and manifest parser, through the cffi binding.

Run in its own process by ``tests/test_fuzz_libet.py`` so that a crash (a signal) fails the test
instead of killing pytest:

    python tests/reliability_fuzz_driver.py --lib libet.so --model EXPORT_DIR --target npy|manifest \
        --examples 600 --seed 1 --work SCRATCH_DIR

Each example writes one fuzzed file into a private copy of a valid export and loads it. The
property: the load either succeeds (and a forward pass then works) or raises EngineError with a
known status and a message naming the folder; never a crash, never a hang (per-example deadline).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pipeline_steps.engine import Engine, EngineError  # noqa: E402

KNOWN_STATUSES = set(range(1, 8))
NPY_TARGETS = ("bert.pooler.dense.weight.npy", "classifier.bias.npy",
               "bert.encoder.layer.0.intermediate.dense.weight.index.npy",
               "bert.encoder.layer.0.intermediate.dense.weight.tiles.npy")
MAGIC = b"\x93NUMPY"

# Tokens that stress a parser: boundaries, overflow, separators, paths, encodings.
NASTY_INTS = ["0", "1", "-1", "2", "16", "32", "65535", "2147483647", "2147483648", "-2147483649",
              "4294967296", "9223372036854775807", "9223372036854775808", "99999999999999999999", "1e3", "0x10"]
NASTY_TOKENS = NASTY_INTS + ["", " ", "f32", "f16", "f64", "i4", "16x16", "0x16", "16x0", "x", "16x", "1,2,3,4,5",
                             ",", "32,", ",32", "32,,32", "../x.npy", "/etc/passwd", "a/b.npy", ".x.npy", "..", ".",
                             "nan", "inf", "-inf", "1e-400", "1e400", "gelu", "relu", "\x00", "\u00e9", "\ufeff",
                             "#", "tensor", "tiled", "config", "pruned_heads", "et-weights", "0,0", "0,1,0", "99"]
DESCRS = ["<f4", "<f2", "<i4", "<i8", ">f4", "<f8", "|u1", "|b1", "<c8", "O", "", "<f4 ", "f4", "<U3", "'<f4'"]
SHAPE_DIMS = [0, 1, 2, 3, 16, 32, 64, 2**31 - 1, 2**31, 2**32, 2**40, 2**62, 2**63 - 1, 10**20]


def npy_bytes(descr: str, fortran: str, shape_text: str, data: bytes, major: int = 1, minor: int = 0,
              header_len: int | None = None, extra_keys: str = "") -> bytes:
    """A .npy file assembled from (possibly invalid) parts."""
    header = ("{'descr': " + repr(descr) + ", 'fortran_order': " + fortran + ", 'shape': " + shape_text
              + ", " + extra_keys + "}").encode("utf-8", errors="surrogatepass")
    header += b" " * ((64 - (len(header) + 12) % 64) % 64) + b"\n"
    n = len(header) if header_len is None else header_len
    size = n.to_bytes(2 if major == 1 else 4, "little", signed=False) if 0 <= n < 2 ** (16 if major == 1 else 32) \
        else b"\xff\xff"
    return MAGIC + bytes([major & 0xFF, minor & 0xFF]) + size + header + data


@st.composite
def structured_npy(draw) -> bytes:
    """Header grammar with nasty values; data sized right or wrong."""
    dims = draw(st.lists(st.sampled_from(SHAPE_DIMS) | st.integers(0, 70), max_size=5))
    shape_text = draw(st.sampled_from(["({})", "({},)", "[{}]", "({}", "{}"])).format(", ".join(map(str, dims)))
    descr = draw(st.sampled_from(DESCRS) | st.text(max_size=4))
    fortran = draw(st.sampled_from(["False", "True", "0", "None", "false", "'False'"]))
    count = 1
    for d in dims:
        count *= d
    nbytes = count * 4 if count * 4 < 20000 else draw(st.integers(0, 512))
    nbytes = max(0, nbytes + draw(st.sampled_from([0, 0, 0, -1, 1, -4, 4])))
    data = draw(st.binary(min_size=min(nbytes, 64), max_size=min(nbytes, 64))) * (nbytes // 64 + 1)
    return npy_bytes(descr, fortran, shape_text, data[:nbytes],
                     major=draw(st.sampled_from([1, 1, 1, 2, 3, 0, 4, 255])), minor=draw(st.sampled_from([0, 0, 1])),
                     header_len=draw(st.none() | st.integers(0, 70000)),
                     extra_keys=draw(st.sampled_from(["", "", "'descr': '<f4', ", "'x': 1, ", "'shape': (), "])))


@st.composite
def mutated_npy(draw, original: bytes) -> bytes:
    """Byte flips, truncation and insertion applied to a valid file."""
    data = bytearray(original)
    for _ in range(draw(st.integers(0, 6))):
        if data:
            pos = draw(st.integers(0, min(len(data) - 1, 200)) | st.integers(0, len(data) - 1))
            data[pos] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    if draw(st.integers(0, 4)) == 0:
        pos = draw(st.integers(0, len(data)))
        data[pos:pos] = draw(st.binary(max_size=16))
    return bytes(data)


@st.composite
def mutated_manifest(draw, original: str) -> str:
    """Line deletions, duplications, swaps, field replacements, insertions and truncation."""
    lines = original.splitlines()
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["delete", "duplicate", "swap", "field", "field", "field", "insert", "split"]))
        i = draw(st.integers(0, len(lines) - 1)) if lines else 0
        if op == "delete" and lines:
            del lines[i]
        elif op == "duplicate" and lines:
            lines.insert(i, lines[i])
        elif op == "swap" and len(lines) > 1:
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "field" and lines:
            fields = lines[i].split(" ")
            k = draw(st.integers(0, len(fields)))
            token = draw(st.sampled_from(NASTY_INTS) | st.sampled_from(NASTY_TOKENS) | st.text(max_size=8))
            if k == len(fields):
                fields.append(token)
            else:
                fields[k] = token
            lines[i] = " ".join(fields)
        elif op == "insert":
            lines.insert(i, " ".join(draw(st.lists(st.sampled_from(NASTY_TOKENS), max_size=7))))
        elif op == "split" and lines:
            cut = draw(st.integers(0, len(lines[i])))
            lines[i:i + 1] = [lines[i][:cut], lines[i][cut:]]
    text = draw(st.sampled_from(["\n", "\r\n", "\n\n"])).join(lines)
    if draw(st.integers(0, 5)) == 0:
        text = text[: draw(st.integers(0, len(text)))]
    return text


class Harness:
    """A private copy of the export; writes one fuzzed file, loads, restores."""

    def __init__(self, lib: Path, model: Path, work: Path) -> None:
        self.lib = lib
        self.folder = work / "model"
        if self.folder.exists():
            shutil.rmtree(self.folder)
        shutil.copytree(model, self.folder)
        self.manifest = self.folder / "weights.txt"
        self.originals = {p.name: p.read_bytes() for p in self.folder.iterdir()}
        self.outcomes: Counter[str] = Counter()

    def check(self, name: str, content: bytes) -> None:
        """Write ``content`` as file ``name``, load, assert the property, restore the file."""
        target = self.folder / name
        target.write_bytes(content)
        try:
            try:
                with Engine(self.lib, self.manifest, backend="cpu", threads=1) as eng:
                    logits = eng.forward(np.array([1, 2, 3], np.int32), np.array([3], np.int32))
                    assert logits.shape == (1, eng.info["labels"])
                self.outcomes["loaded"] += 1
            except EngineError as err:
                message = str(err)
                assert err.status in KNOWN_STATUSES, (err.status, message)
                assert str(self.folder) in message, f"message does not name the folder: {message!r}"
                self.outcomes[message.split(":")[0]] += 1
        finally:
            target.write_bytes(self.originals[name])


def run(harness: Harness, target: str, examples: int, seed_value: int, deadline_ms: int) -> None:
    """Fuzz ``target`` (npy or manifest) for ``examples`` Hypothesis examples."""
    conf = settings(max_examples=examples, deadline=deadline_ms, database=None, derandomize=False,
                    suppress_health_check=list(HealthCheck), print_blob=True)
    if target == "npy":
        names = st.sampled_from(NPY_TARGETS)

        @seed(seed_value)
        @conf
        @given(st.data())
        def fuzz(data) -> None:
            name = data.draw(names)
            content = data.draw(st.one_of(st.binary(max_size=300), structured_npy(),
                                          mutated_npy(harness.originals[name])))
            harness.check(name, content)
    else:
        original = harness.originals["weights.txt"].decode()

        @seed(seed_value)
        @conf
        @given(st.one_of(mutated_manifest(original), mutated_manifest(original), st.text(max_size=200)))
        def fuzz(text: str) -> None:
            harness.check("weights.txt", text.encode("utf-8", errors="surrogatepass"))
    fuzz()


def main() -> int:
    """Fuzz one target; print a JSON summary of outcomes; exit 1 on a property violation."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lib", type=Path, required=True)
    p.add_argument("--model", type=Path, required=True, help="a valid export folder (weights.txt + .npy)")
    p.add_argument("--target", choices=["npy", "manifest"], required=True)
    p.add_argument("--examples", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--deadline-ms", type=int, default=5000, help="per-example limit: a slower example fails as a hang")
    p.add_argument("--work", type=Path, required=True)
    args = p.parse_args()
    harness = Harness(args.lib, args.model, args.work)
    run(harness, args.target, args.examples, args.seed, args.deadline_ms)
    print(json.dumps({"target": args.target, "seed": args.seed, "examples": sum(harness.outcomes.values()),
                      "outcomes": harness.outcomes.most_common()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
