"""Instructions per tensor-core mma in the basic blocks of a kernel's SASS (``cuobjdump -sass`` text).

For every function whose name contains the given text, prints its static instruction count and each basic
block (split at branch targets and after branches / exits) holding at least ``--min-mma`` HMMA instructions:
its address, length, HMMA count, instructions per HMMA and most frequent opcodes. NOTES.md's instruction
counts of the attention kernels (session 5) come from it. No GPU needed:

    nvcc -std=c++17 -O3 --expt-relaxed-constexpr -arch=sm_90 -cubin -Icuda_lib/src -Icuda_lib/src/cuda \\
        -Icuda_lib/include -o /tmp/attention.cubin cuda_lib/src/cuda/attention.cu
    cuobjdump -sass /tmp/attention.cubin | python cuda_lib/gpu/sass_blocks.py attention_long_kernelI6__halfLi64
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from dataclasses import dataclass

INSTRUCTION = re.compile(r"/\*([0-9a-f]{4,})\*/\s+([^;]+);")
BRANCH_TARGET = re.compile(r"\bBRA\s+(?:`\(\.L_x_\d+\)|(0x[0-9a-f]+))")


@dataclass
class Block:
    """A basic block: start address and its instructions' opcodes (predicate and modifiers dropped)."""

    start: int
    opcodes: list[str]


def opcode(text: str) -> str:
    """``@!P0 HMMA.16816.F32 R4, ...`` -> ``HMMA``."""
    words = text.split()
    word = words[1] if words[0].startswith("@") else words[0]
    return word.split(".")[0]


def functions(sass: str) -> dict[str, list[tuple[int, str]]]:
    """(address, instruction text) of each function in ``cuobjdump -sass`` output, by name."""
    out: dict[str, list[tuple[int, str]]] = {}
    name = None
    for line in sass.splitlines():
        if "Function :" in line:
            name = line.split("Function :", 1)[1].strip()
            out[name] = []
        elif name is not None and (m := INSTRUCTION.search(line)):
            out[name].append((int(m.group(1), 16), m.group(2).strip()))
    return out


def basic_blocks(instructions: list[tuple[int, str]]) -> list[Block]:
    """Split at every branch target address and after every branch or exit."""
    targets = {int(t, 16) for _, text in instructions for t in BRANCH_TARGET.findall(text) if t}
    blocks: list[Block] = []
    current: Block | None = None
    for address, text in instructions:
        if current is None or address in targets:
            if current is not None and current.opcodes:
                blocks.append(current)
            current = Block(address, [])
        current.opcodes.append(opcode(text))
        if current.opcodes[-1] in ("BRA", "EXIT"):
            blocks.append(current)
            current = None
    if current is not None and current.opcodes:
        blocks.append(current)
    return blocks


def report(sass: str, pattern: str, min_mma: int) -> list[str]:
    """The printed lines for the functions whose names contain ``pattern``."""
    lines = []
    for name, instructions in functions(sass).items():
        if pattern not in name:
            continue
        lines.append(f"{name}: {len(instructions)} instructions")
        for block in basic_blocks(instructions):
            counts = Counter(block.opcodes)
            if counts["HMMA"] < max(min_mma, 1):
                continue
            top = ", ".join(f"{op} {n}" for op, n in counts.most_common(8))
            lines.append(f"  block 0x{block.start:x}: {len(block.opcodes)} instructions, {counts['HMMA']} HMMA "
                         f"({len(block.opcodes) / counts['HMMA']:.1f} a mma): {top}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("function", help="text the function's (mangled) name contains")
    ap.add_argument("--min-mma", type=int, default=8, help="smallest HMMA count of a block to print")
    args = ap.parse_args(argv)
    lines = report(sys.stdin.read(), args.function, args.min_mma)
    if not lines:
        print(f"no function name contains {args.function!r}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
