"""x86 VNNI tensor intrinsics for exact int8 matmuls (``vpdpbusd``: u8 × s8 -> s32, accumulating).

``DOT_16x4_U8S8`` (AVX-512 VNNI, one zmm) and ``DOT_8x4_U8S8`` (AVX-VNNI or AVX-512 VL, one ymm)
compute ``C[0:L] += A[0:4] · B[0:L, 0:4]``: the four uint8 A values are broadcast as one 32-bit
word to every lane, B is an L (columns) × 4 (k) int8 block (4·L contiguous bytes), and each int32
lane gets the sum of its four u8·s8 products added in.

Why this is exact: each product is at most 255·128 = 32640 in magnitude and the four-product sum
(<= 130560) is formed at full precision inside the instruction; it is then added to the int32
lane with wrap-around (``vpdpbusd``, not the saturating ``vpdpbusds``). So, unlike the AVX2
``vpmaddubsw`` (int16 saturation), no operand value needs avoiding; the kernels keep every partial
sum inside int32 anyway (``vnni_matmul.MAX_K``). Signed A and unsigned B are made u8 / s8 by the
kernels with an exact correction term (``vnni_matmul``).

TVM ships the same 512-bit body (``s_tir/tensor_intrin/x86.py``, ``dot_16x4_vnni``) with a
global-scope C; ours has C in ``local`` scope so it matches ``cache_write(..., "local")`` (the
accumulators stay in registers), and adds the 256-bit form. LLVM lowers the 256-bit intrinsic to
the VEX-encoded AVX-VNNI instruction on CPUs that have AVX-VNNI but no AVX-512 (Alder Lake).
Both widths come from one template, the lane count its parameter: the description and the
buffers from ``cpu/dot_intrin``, the body from ``_vpdpbusd``.
"""

from __future__ import annotations

from tvm.script import tirx as T
from tvm.target import codegen

from graphopt.backends.tvm.cpu import dot_intrin

__all__ = ["DOT_8x4_U8S8", "DOT_16x4_U8S8", "KW", "register"]

DOT_16x4_U8S8 = "graphopt_dot_16x4_u8s8_avx512vnni"
DOT_8x4_U8S8 = "graphopt_dot_8x4_u8s8_avxvnni"
KW = 4  # uint8 values of one A row that one vpdpbusd lane sums
LLVM_INTRINSICS = {16: "llvm.x86.avx512.vpdpbusd.512", 8: "llvm.x86.avx512.vpdpbusd.256"}


def _operand_types(lanes: int) -> tuple[str, str]:
    """(A type, B type) of the LLVM intrinsic's multiplicands: LLVM 22 declares them as bytes
    (``<64 x i8>``), older LLVMs as ``<16 x i32>``; a mismatch fails LLVM's verifier."""
    if codegen.llvm_version_major() >= 22:
        return f"uint8x{4 * lanes}", f"int8x{4 * lanes}"
    return f"int32x{lanes}", f"int32x{lanes}"


def _vpdpbusd(lanes: int):
    """The implementation's body for ``lanes`` int32 lanes: one vpdpbusd."""
    intrinsic = LLVM_INTRINSICS[lanes]
    b_load, c_type = f"int8x{4 * lanes}", f"int32x{lanes}"
    a_type, b_type = _operand_types(lanes)

    @T.macro
    def body(A, B, C):
        a = T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"), lanes), dtype=a_type)
        b = T.reinterpret(B.vload([0, 0], dtype=b_load), dtype=b_type)
        C[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id(intrinsic), C.vload([0], dtype=c_type), a, b, dtype=c_type
        )

    return body


def register() -> None:
    """Register both intrinsics with TVM (idempotent)."""
    for name, lanes in ((DOT_16x4_U8S8, 16), (DOT_8x4_U8S8, 8)):
        dot_intrin.register(name, lanes, KW, "uint8", "int8", _vpdpbusd(lanes))


register()
