"""cuda_lib/gpu/sass_blocks.py: basic blocks and instructions per mma from ``cuobjdump -sass`` text."""

from __future__ import annotations

import io

from gpu_scripts import load

sass = load("sass_blocks")

SASS = """
        Function : _Z6kernelv
        .headerflags    @"EF_CUDA_SM90"
        /*0000*/                   S2R R0, SR_TID.X ;                                   /* 0x0000000000007919 */
        /*0010*/              @P0 BRA 0x60 ;                                            /* 0x0000000000007947 */
        /*0020*/                   LDSM.16.M88.4 R4, [R2] ;                             /* 0x0000000000007947 */
        /*0030*/                   HMMA.16816.F32 R8, R4, R6, RZ ;                      /* 0x0000000000007947 */
        /*0040*/                   HMMA.16816.F32 R12, R4, R7, R12 ;                    /* 0x0000000000007947 */
        /*0050*/                   FMUL R1, R8, R9 ;                                    /* 0x0000000000007947 */
        /*0060*/              @!P1 HMMA.16816.F32 R8, R4, R6, R8 ;                      /* 0x0000000000007947 */
        /*0070*/                   EXIT ;                                               /* 0x0000000000007947 */
        Function : _Z5otherv
        /*0000*/                   HMMA.16816.F32 R8, R4, R6, RZ ;                      /* 0x0000000000007947 */
"""


def test_opcode_drops_predicate_and_modifiers():
    assert sass.opcode("@!P1 HMMA.16816.F32 R8, R4, R6, R8") == "HMMA"
    assert sass.opcode("LDSM.16.M88.4 R4, [R2]") == "LDSM"


def test_blocks_split_at_branch_targets_and_after_branches():
    blocks = sass.basic_blocks(sass.functions(SASS)["_Z6kernelv"])
    assert [(b.start, b.opcodes) for b in blocks] == [
        (0x0, ["S2R", "BRA"]),
        (0x20, ["LDSM", "HMMA", "HMMA", "FMUL"]),
        (0x60, ["HMMA", "EXIT"]),
    ]


def test_report_prints_the_matching_functions_blocks_with_enough_mma():
    lines = sass.report(SASS, "kernel", min_mma=2)
    assert lines == ["_Z6kernelv: 8 instructions",
                     "  block 0x20: 4 instructions, 2 HMMA (2.0 a mma): HMMA 2, LDSM 1, FMUL 1"]


def test_no_matching_function_is_an_error(monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO(SASS))
    assert sass.main(["no_such_kernel"]) == 1
    assert "no function name contains 'no_such_kernel'" in capsys.readouterr().err
