"""Pre-scheduled int8 matmul kernels for aarch64 with the dot-product extension (``sdot``), exact.

The kernels are ``cpu/dot_matmul``'s on ``SDOT``: the loop nest tensorized with
``sdot_intrin.DOT_4x4_S8``. ``sdot`` is signed × signed, so uint8 operands are made int8
(X - 128) and the exact correction terms of ``dot_matmul`` make up for it. ivit's linear layers
(int8 A, int8 weights, no zero points) and Q·Kᵀ (int8 × int8) need none; P·V (uint8 softmax
probabilities × int8 V) has ``128 · colsum(V)``.

The tile: 4 rows × 4 q-registers (16 int32 columns) of accumulators, 16 of the 32 q-registers,
plus 4 B and 4 broadcast A registers. The corrections stay a stage of their own (``out``): adding
them in the accumulator write-back, as the VNNI kernels do, is not yet measured on a device.
"""

from __future__ import annotations

import functools

from graphopt.backends.tvm.cpu import dot_matmul

from .sdot_intrin import DOT_4x4_S8, LANES

__all__ = ["SDOT", "activation_matmul_func", "conv_func", "pack_weights", "weight_matmul_func"]

SDOT = dot_matmul.DotInstruction("sdot", DOT_4x4_S8, lanes=LANES, a_dtype="int8", mr=4, nv=4)

pack_weights = functools.partial(dot_matmul.pack_weights, isa=SDOT)
weight_matmul_func = functools.partial(dot_matmul.weight_matmul_func, isa=SDOT)
activation_matmul_func = functools.partial(dot_matmul.activation_matmul_func, isa=SDOT)
conv_func = functools.partial(dot_matmul.conv_func, isa=SDOT)
