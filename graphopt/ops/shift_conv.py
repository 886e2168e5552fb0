"""The graphopt op ``ShiftConv``: a convolution whose weights are signed powers of two, stored packed.

    Y = Conv(X, W) * S + B      W [M, C/group, *kernel_shape] = reshape(Dᵀ), D [K, M] decoded from P
                                S, B [M] float32, broadcast over the spatial axes (one scale per output channel)

The codes are ``ShiftMatMul``'s, packed the same way (``graphopt/ops/shift_matmul.py``: ``31 // bits``
codes per int32 word, along K, ``sign << (bits-1) | e`` for ``±2^-e``, a zero code unless
``zero_free``): the conv weight ``[M, C/group, k...]`` is read as the matrix ``[K, M]`` with
``K = C/group · prod(kernel_shape)`` (``weight_matrix``), one column per output channel, so the
per-column scale is a per-output-channel scale and a depthwise conv (group = C, K = prod(kernel))
packs like any other. P is int32 ``[ceil(K / c), M]``: 5 bits give 6x fewer bytes than float32.

Attributes: ``bits``, ``zero_free`` as ShiftMatMul; ``kernel_shape`` (required: the body reshapes the
decoded codes with it), ``group`` (default 1), and ``strides`` / ``pads`` / ``dilations`` passed to
Conv as they are (absent: Conv's defaults). The reference and the body compute exactly that: the
float weights ``±2^-e`` (bit-exact everywhere), ``Conv``, then ``Mul(·, S)`` and ``Add(·, B)``.

Made by ``shift-linear`` (``passes/shift_linear.py``); the TVM converter
(``backends/tvm/kernels/shift_conv.py``) decodes constant codes at compile time into TVM's conv.
"""

from __future__ import annotations

import itertools

import numpy as np

from graphopt import ops
from graphopt.ops.shift_matmul import (
    BITS,
    FLOAT_WEIGHTS_BODY,
    SIGN_AND_EXPONENT_BODY,
    UNPACK_CODES_BODY,
    decode,
    pack,
    unpack,
)

__all__ = ["OP_NAME", "SHIFT_CONV", "decoded_weight", "shift_conv_reference", "weight_matrix"]

OP_NAME = "ShiftConv"


def weight_matrix(w: np.ndarray) -> np.ndarray:
    """A conv weight ``[M, C/g, k...]`` as the ``[K, M]`` matrix whose columns are its output channels."""
    return np.asarray(w).reshape(w.shape[0], -1).T


def decoded_weight(p: np.ndarray, channels_per_group: int, kernel_shape, bits: int = BITS, zero_free: int = 0) -> np.ndarray:
    """The float32 ``±2^-e`` weights ``[M, C/g, *kernel_shape]`` that P packs (the scale not applied)."""
    k = int(channels_per_group * np.prod(kernel_shape, dtype=np.int64))
    d = decode(unpack(p, k, bits), bits, zero_free)  # [K, M]
    return np.ascontiguousarray(d.T.reshape(p.shape[1], channels_per_group, *kernel_shape))


def conv_reference(x: np.ndarray, w: np.ndarray, group: int = 1, strides=None, pads=None, dilations=None) -> np.ndarray:
    """ONNX Conv (NC + any spatial rank, explicit pads) in numpy, accumulated in float64."""
    nd = w.ndim - 2
    strides = list(strides or [1] * nd)
    dilations = list(dilations or [1] * nd)
    pads = list(pads or [0] * (2 * nd))
    x = np.pad(np.asarray(x, np.float64), [(0, 0), (0, 0)] + [(pads[i], pads[i + nd]) for i in range(nd)])
    n, c = x.shape[:2]
    m, kernel = w.shape[0], w.shape[2:]
    out = [(x.shape[2 + i] - dilations[i] * (kernel[i] - 1) - 1) // strides[i] + 1 for i in range(nd)]
    xg = x.reshape(n, group, c // group, *x.shape[2:])
    wg = np.asarray(w, np.float64).reshape(group, m // group, c // group, *kernel)
    y = np.zeros((n, group, m // group, *out))
    for offset in itertools.product(*(range(k) for k in kernel)):
        window = tuple(slice(o * d, o * d + s * (size - 1) + 1, s) for o, d, s, size in zip(offset, dilations, strides, out))
        y += np.einsum("ngc...,gmc->ngm...", xg[(slice(None),) * 3 + window], wg[(slice(None),) * 3 + offset], optimize=True)
    return y.reshape(n, m, *out)


def shift_conv_reference(x, p, s, b, *, kernel_shape, bits: int = BITS, zero_free: int = 0, group: int = 1,
                         strides=None, pads=None, dilations=None) -> np.ndarray:
    """The spec: ``Conv(x, decoded W) · S + B`` per output channel, in x's dtype (float32)."""
    x = np.asarray(x)
    w = decoded_weight(p, x.shape[1] // int(group), list(kernel_shape), int(bits), int(zero_free))
    y = conv_reference(x, w, int(group), strides, pads, dilations).astype(x.dtype)
    channel = (1, -1) + (1,) * len(kernel_shape)
    return (y * np.asarray(s, x.dtype).reshape(channel) + np.asarray(b, x.dtype).reshape(channel)).astype(x.dtype)


def _examples():
    rng = np.random.default_rng(20251206)

    def case(x_shape, m, kernel, group=1, bits=BITS, zero_free=0, **conv):
        k = x_shape[1] // group * int(np.prod(kernel))
        codes = rng.integers(0, 1 << bits, (k, m))
        x = rng.standard_normal(x_shape).astype(np.float32)
        s = rng.uniform(0.1, 2.0, m).astype(np.float32)
        b = rng.standard_normal(m).astype(np.float32)
        return (x, pack(codes, bits), s, b), {"bits": bits, "zero_free": zero_free, "kernel_shape": list(kernel),
                                              "group": group, **conv}

    return [
        case((1, 3, 6, 5), 4, (3, 3)),  # K = 27: the last word half used
        case((2, 4, 7, 7), 6, (3, 3), group=2, strides=[2, 1], pads=[1, 0, 1, 2], dilations=[1, 2]),
        case((1, 5, 6, 6), 5, (3, 3), group=5, pads=[1, 1, 1, 1], zero_free=1),  # depthwise, K = 9
        case((2, 3, 10), 4, (3,), strides=[2], pads=[1, 1], bits=3),  # 1-D, 3-bit codes
        case((1, 8, 4, 4), 3, (1, 1), bits=7, zero_free=1),  # pointwise, 7-bit codes
    ]


SHIFT_CONV = ops.declare_op(
    ops.OpDef(
        name=OP_NAME,
        doc=("Y = Conv(X, W) * S + B: W [M, C/group, *kernel_shape] signed powers of two ±2^-e (or 0), the transposed "
             "[K, M] codes of int32 words P packed along K as ShiftMatMul's; S, B float32 per output channel."),
        reference=shift_conv_reference,
        body="""<domain: "pkg.graphopt", opset_import: ["" : 13]>
ShiftConv <kernel_shape, strides, pads, dilations, bits: int = 5, zero_free: int = 0, group: int = 1> (X, P, S, B) => (Y) {
"""
        + UNPACK_CODES_BODY + """   g = Constant <value_int: int = @group> ()
   ks = Constant <value_ints: ints = @kernel_shape> ()
   first = Constant <value_ints: ints = [1]> ()
   second = Constant <value_ints: ints = [2]> ()
   shape_x = Shape (X)
   channels = Slice (shape_x, first, second)
   per_group = Div (channels, g)
   tail = Concat <axis: int = 0> (per_group, ks)
   k = ReduceProd <keepdims: int = 1> (tail)
"""
        + SIGN_AND_EXPONENT_BODY + FLOAT_WEIGHTS_BODY + """   d_t = Transpose <perm: ints = [1, 0]> (d)
   shape_p = Shape (P)
   m = Slice (shape_p, first, second)
   w_shape = Concat <axis: int = 0> (m, tail)
   w = Reshape (d_t, w_shape)
   conv = Conv <kernel_shape: ints = @kernel_shape, strides: ints = @strides, pads: ints = @pads, dilations: ints = @dilations, group: int = @group> (X, w)
   rank_k = Shape (ks)
   ones = ConstantOfShape <value: tensor = int64[1] {1}> (rank_k)
   minus_one = Constant <value_ints: ints = [-1]> ()
   channel_shape = Concat <axis: int = 0> (minus_one, ones)
   s_c = Reshape (S, channel_shape)
   b_c = Reshape (B, channel_shape)
   scaled = Mul (conv, s_c)
   Y = Add (scaled, b_c)
}""",
        examples=_examples,
    )
)
