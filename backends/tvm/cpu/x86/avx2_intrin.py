"""AVX2 tensor intrinsics for exact int8/int16 matmuls (TVM ships only VNNI and AVX-512 ones).

Both compute ``C[0:8] += A[0:kw] · B[0:8, 0:kw]`` (int32 accumulators; the description and the
buffers come from ``cpu/dot_intrin``), with ``A`` broadcast as one 32-bit word to every lane:

``DOT_8x4_S8_SIGN`` (kw = 4): int8 A · int8 B with B in [-127, 127]. ``vpmaddubsw`` wants an unsigned
first operand and sums two products into a *saturating* int16, so it is fed |a| (``vpabsb``;
|-128| = 0x80 reads as unsigned 128) and ``sign(a)·b`` (``vpsignb``; -b never overflows because
b != -128). Each int16 pair sum is then a0·b0 + a1·b1 with |a| <= 128 and |b| <= 127:
|sum| <= 2·128·127 = 32512 <= 32767, so nothing saturates and the result is exact.
``vpmaddwd`` with ones widens the pairs into int32 (exact).

``DOT_8x2_I16`` (kw = 2): int16 A · int16 B with one ``vpmaddwd``: each int32 lane gets
a0·b0 + a1·b1 computed exactly (only -32768·-32768·2 could overflow; our operands are int8/uint8
values minus a zero point, |v| <= 255). Used for uint8 activations (softmax probabilities 0..255),
activation×activation products (both sides may hold -128), zero points and ConvInteger.
"""

from __future__ import annotations

from tvm.script import tirx as T

from graphopt.backends.tvm.cpu import dot_intrin

__all__ = ["DOT_8x2_I16", "DOT_8x4_S8_SIGN", "LANES", "register"]

DOT_8x4_S8_SIGN = "graphopt_dot_8x4_s8_sign_avx2"
DOT_8x2_I16 = "graphopt_dot_8x2_i16_avx2"
LANES = 8  # int32 accumulators in one ymm register


@T.macro
def _sign_trick(A, B, C):
    a = T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "int8x4"), dtype="int32"), 8), dtype="int8x32")
    a_abs = T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.abs"), a, T.bool(False), dtype="int8x32")
    b_signed = T.call_llvm_pure_intrin(
        T.llvm_lookup_intrinsic_id("llvm.x86.avx2.psign.b"), B.vload([0, 0], dtype="int8x32"), a, dtype="int8x32"
    )
    pairs = T.call_llvm_pure_intrin(
        T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.ub.sw"),
        T.reinterpret(a_abs, dtype="uint8x32"),
        b_signed,
        dtype="int16x16",
    )
    C[T.ramp(T.int32(0), 1, 8)] += T.call_llvm_pure_intrin(
        T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), pairs, T.int16x16(1), dtype="int32x8"
    )


@T.macro
def _pmaddwd(A, B, C):
    a = T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "int16x2"), dtype="int32"), 8), dtype="int16x16")
    C[T.ramp(T.int32(0), 1, 8)] += T.call_llvm_pure_intrin(
        T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), a, B.vload([0, 0], dtype="int16x16"), dtype="int32x8"
    )


def register() -> None:
    """Register both intrinsics with TVM (idempotent: importing twice or re-registering is harmless)."""
    dot_intrin.register(DOT_8x4_S8_SIGN, LANES, 4, "int8", "int8", _sign_trick)
    dot_intrin.register(DOT_8x2_I16, LANES, 2, "int16", "int16", _pmaddwd)


register()
