"""Pre-scheduled int8 matmul kernels for x86 with VNNI (``vpdpbusd``), exact.

The kernels are ``cpu/dot_matmul``'s on one of the two ``ISAS``; only the operand types and the
instruction differ from the sdot ones. ``vpdpbusd`` multiplies *unsigned* A by *signed* B, so A is
made uint8 (int8 A + 128) and B int8 (uint8 B - 128), with ``dot_matmul``'s exact correction terms.
ivit's linear layers (int8 A, int8 weights, no zero points) have only ``-128 · colsum(W)``,
precomputed in numpy with the packing; Q·Kᵀ computes ``-128 · colsum(K)`` at run time; P·V (uint8
probabilities × int8 V) has no correction at all. Where the output needs no un-padding the ``out``
stage is folded into the write-back of the register tile (``inline_output``).

No overflow: |A'·B'| <= 255·128, |da · (B - zb)| <= 255·255 and |db · A'| <= 128·255 per k, so
every partial sum of every term is below K · 130305 in magnitude, which fits int32 for
K <= ``MAX_K`` = 16480 (2^31 / 130305); the converter sends longer reductions to the AVX2 kernels.
Within that bound all sums are taken in int32 without wrapping, so results are bit-exact against
numpy's int32 matmul.

Two instruction widths (``ISAS``): AVX-512 VNNI (16 int32 lanes per zmm, 32 registers: a 4×4 tile
of 16 accumulators + 4 B panels) and AVX-VNNI (8 lanes per ymm, 16 registers: a 4×2 tile). The
kernel functions take the width by name: ``isa="avx512-vnni"`` (default) or ``"avx-vnni"``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from graphopt.backends.tvm.cpu import dot_matmul

from . import vnni_intrin

__all__ = ["ISAS", "MAX_K", "activation_matmul_func", "conv_func", "pack_weights", "weight_matmul_func"]

MAX_K = 2**31 // (255 * 128 + 255 * 255 + 128 * 255)  # 16480: see "No overflow" above


def _vnni(lanes: int, intrin: str, nv: int) -> dot_matmul.DotInstruction:
    return dot_matmul.DotInstruction("vnni", intrin, lanes=lanes, a_dtype="uint8", mr=4, nv=nv,
                                     inline_output=True, max_k=MAX_K)


ISAS = {
    "avx512-vnni": _vnni(16, vnni_intrin.DOT_16x4_U8S8, nv=4),
    "avx-vnni": _vnni(8, vnni_intrin.DOT_8x4_U8S8, nv=2),
}


def _by_name(func: Callable) -> Callable:
    """``func`` with its instruction named as in ``ISAS`` (``isa="avx512-vnni"`` unless told)."""

    @functools.wraps(func)
    def named(*args, isa: str = "avx512-vnni", **kwargs):
        return func(*args, isa=ISAS[isa], **kwargs)

    return named


pack_weights = _by_name(dot_matmul.pack_weights)
weight_matmul_func = _by_name(dot_matmul.weight_matmul_func)
activation_matmul_func = _by_name(dot_matmul.activation_matmul_func)
conv_func = _by_name(dot_matmul.conv_func)
