"""Exact int8 matmul kernels for TVM: ONNX MatMulInteger / ConvInteger converters per target.

``CONVERTERS`` (merged by ``graphopt.backends.tvm.importer`` into TVM's ONNX frontend):
x86 with AVX2 gets pre-scheduled kernels built on graphopt's AVX2 tensor intrinsics
(``avx2_intrin``: a sign trick that makes ``vpmaddubsw`` exact for int8 weights in [-127, 127],
and an int16 ``vpmaddwd`` path for everything else); other targets get plain int32-accumulating
TE kernels (``generic``). aarch64 with ``+dotprod`` gets sdot kernels (``neon_intrin``,
``neon_matmul``: uint8 operands offset to int8 with an exact correction term) for MatMulInteger
and ConvInteger. x86 with AVX-512 VNNI or AVX-VNNI gets the same structure on ``vpdpbusd``
(``vnni_intrin``, ``vnni_matmul``: int8 activations offset to uint8), ahead of the AVX2 kernels.
Every path computes numpy's int32 result bit for bit.
"""

from __future__ import annotations

from .converters import CONVERTERS, convert_conv_integer, convert_matmul_integer, has_avx2, has_dotprod, vnni_isa
from .neon_matmul import PackedWeights, activation_matmul_func, pack_weights, weight_matmul_func
from .neon_matmul import conv_func as neon_conv_func
from .x86_matmul import conv_func, matmul_func

__all__ = [
    "CONVERTERS",
    "PackedWeights",
    "activation_matmul_func",
    "conv_func",
    "convert_conv_integer",
    "convert_matmul_integer",
    "has_avx2",
    "has_dotprod",
    "matmul_func",
    "neon_conv_func",
    "pack_weights",
    "vnni_isa",
    "weight_matmul_func",
]
