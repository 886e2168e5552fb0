"""NEON dot-product tensor intrinsic for exact int8 matmuls on aarch64 (``+dotprod``: sdot).

``DOT_4x4_S8`` computes ``C[0:4] += A[0:4] · B[0:4, 0:4]``: one ``sdot`` multiplies 16 int8 pairs
and adds each group of four products into one int32 lane. The four A values are broadcast as one
32-bit word to every lane; B is a 4 (columns) × 4 (k) block, 16 contiguous bytes. Each product
fits int16 and each 4-product sum is added in 32 bits, so every int8 value, -128 included, is exact
(no saturation, unlike x86's ``vpmaddubsw``). The description and the buffers come from
``cpu/dot_intrin``.

TVM's own ``arm_cpu.get_dotprod_intrin`` has the same body but a global-scope C, which does not
match a cache-written accumulator; uint8 operands are made int8 by the kernels
(``sdot_matmul``: value - 128 plus a correction term), so the signed instruction is the only one needed.
"""

from __future__ import annotations

from tvm.script import tirx as T

from graphopt.backends.tvm.cpu import dot_intrin

__all__ = ["DOT_4x4_S8", "KW", "LANES", "register"]

DOT_4x4_S8 = "graphopt_dot_4x4_s8_sdot"
LANES = 4  # int32 accumulators in one 128-bit register
KW = 4  # int8 values of one row that one sdot lane sums


@T.macro
def _sdot(A, B, C):
    a = T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "int8x4"), dtype="int32"), 4), dtype="int8x16")
    C[T.ramp(T.int32(0), 1, 4)] = T.call_llvm_pure_intrin(
        T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.sdot.v4i32.v16i8"),
        C.vload([0], dtype="int32x4"),
        B.vload([0, 0], dtype="int8x16"),
        a,
        dtype="int32x4",
    )


def register() -> None:
    """Register the intrinsic with TVM (idempotent)."""
    dot_intrin.register(DOT_4x4_S8, LANES, KW, "int8", "int8", _sdot)


register()
