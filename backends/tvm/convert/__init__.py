"""Converters of standard ONNX ops that graphopt's TVM import replaces: ``MatMulInteger`` and
``ConvInteger`` (TVM has no converter for the latter), each choosing the kernel for the target.

``CONVERTERS`` (merged by ``graphopt.backends.tvm.importer`` into TVM's ONNX frontend) sends each
product to the fastest exact kernel the target's CPU has: ``vpdpbusd`` kernels on x86 with AVX-512
VNNI or AVX-VNNI (``cpu/x86/vnni_matmul``), then the AVX2 sign-trick and ``vpmaddwd`` kernels
(``cpu/x86/avx2_matmul``), ``sdot`` kernels on aarch64 with ``+dotprod`` (``cpu/arm/sdot_matmul``),
else plain int32-accumulating TE kernels for any target (``generic_integer_matmul``) that the
schedule rules of ``cpu/`` or dlight (CUDA) schedule. Every path computes numpy's int32 result bit
for bit.

    integer_matmul.py          the converters and the target queries (has_avx2, vnni_isa, has_dotprod)
    generic_integer_matmul.py  matmul_integer / conv_integer: TE computes, no schedule, any target
"""

from __future__ import annotations

from .integer_matmul import CONVERTERS, has_avx2, has_dotprod, vnni_isa

__all__ = ["CONVERTERS", "has_avx2", "has_dotprod", "vnni_isa"]
