"""TVM for ``ShiftConv``: Y = Conv(X, W) * S + B, W decoded from packed power-of-two codes.

This is a storage win, not a speed win: with constant codes (what ``shift-linear`` writes) the
converter decodes them at compile time (numpy, ``graphopt.ops.shift_conv.decoded_weight``, bit-exact
``±2^-e``) into a float32 constant and emits Relax's ``conv1d`` / ``conv2d`` / ``conv3d``, so graphopt's
CPU pipeline schedules it as any imported Conv (NHWC layout, its conv schedules), then multiplies by S
and adds B per output channel. The built module holds float32 weights; the ONNX file holds the codes.
Codes that are not constants are decoded per call (TE, ``shift_matmul.decoded_weight``) and reshaped.
A native decode-in-the-loop conv kernel is not written.
"""

from __future__ import annotations

import numpy as np
from tvm import relax, te, tirx, topi

from graphopt import ops
from graphopt.ops.shift_conv import OP_NAME, decoded_weight

from ._common import op_attributes
from .shift_matmul import _constant, _static_shape
from .shift_matmul import decoded_weight as te_decoded_weight

__all__ = ["shift_conv"]

_LAYOUTS = {1: "NCW", 2: "NCHW", 3: "NCDHW"}
_KERNEL_LAYOUTS = {1: "OIW", 2: "OIHW", 3: "OIDHW"}
_CONV = {1: relax.op.nn.conv1d, 2: relax.op.nn.conv2d, 3: relax.op.nn.conv3d}


_CONV_ATTRIBUTES = ("kernel_shape", "strides", "pads", "dilations")  # declared without defaults: Conv's own


def _attributes(attrs: dict) -> tuple[int, int, int, list[int], list[int], list[int], list[int]]:
    """(bits, zero_free, group, kernel_shape, strides, pads, dilations), Conv's defaults where absent."""
    attributes = op_attributes(OP_NAME, {k: v for k, v in attrs.items() if k not in _CONV_ATTRIBUTES})
    if "kernel_shape" not in attrs:
        raise ValueError(f"{OP_NAME}: required attribute kernel_shape missing")
    kernel = [int(d) for d in attrs["kernel_shape"]]
    rank = len(kernel)
    strides = [int(d) for d in attrs.get("strides") or [1] * rank]
    pads = [int(d) for d in attrs.get("pads") or [0] * 2 * rank]
    dilations = [int(d) for d in attrs.get("dilations") or [1] * rank]
    return (int(attributes["bits"]), int(attributes["zero_free"]), int(attributes["group"]), kernel, strides, pads,
            dilations)


@ops.implements(OP_NAME, "tvm", part="te")
def shift_conv(x: te.Tensor, p: te.Tensor, s: te.Tensor, b: te.Tensor, kernel_shape, bits: int = 5, zero_free: int = 0,
               group: int = 1, strides=None, pads=None, dilations=None) -> te.Tensor:
    """The meaning in TE: decode, reshape [K, M] -> [M, C/g, k...], topi's N-D conv, then S and B."""
    rank = len(kernel_shape)
    per_group = x.shape[1] // int(group)
    k = per_group * int(np.prod(kernel_shape))
    d = te_decoded_weight(p, k, int(bits), int(zero_free))
    sizes = [int(v) for v in kernel_shape]

    def element(m, c, *spatial):
        flat = c
        for axis, size in zip(spatial, sizes):
            flat = flat * size + axis
        return d[flat, m]

    w = te.compute((p.shape[1], per_group, *sizes), element, name="shift_conv_weight")
    y = topi.nn.conv(x, w, list(strides or [1] * rank), list(pads or [0] * 2 * rank), list(dilations or [1] * rank),
                     int(group), _LAYOUTS[rank], _KERNEL_LAYOUTS[rank])
    return te.compute(y.shape, lambda n, m, *i: y(n, m, *i) * s[m] + b[m], name="shift_conv")


@ops.implements(OP_NAME, "tvm")
def convert(bb: relax.BlockBuilder, inputs: list, attrs: dict) -> relax.Expr:
    x, p, s, b = inputs[:4]
    bits, zero_free, group, kernel, strides, pads, dilations = _attributes(attrs)
    rank = len(kernel)
    shape = _static_shape(x)
    packed = _constant(p, np.int32)
    if shape is None or rank not in _CONV:
        return bb.emit_te(shift_conv, x, p, s, b, kernel, bits, zero_free, group, strides, pads, dilations,
                          primfunc_name_hint="graphopt_shift_conv")
    per_group = shape[1] // group
    if packed is not None:  # the storage form: decoded once, here
        w = relax.const(decoded_weight(packed, per_group, kernel, bits, zero_free))
    else:
        k = per_group * int(np.prod(kernel))
        d = bb.emit_te(te_decoded_weight, p, k, bits, zero_free, primfunc_name_hint="graphopt_shift_decode")
        m = int(p.ty.shape.values[1]) if isinstance(p.ty.shape.values[1], tirx.IntImm) else None
        if m is None:
            return bb.emit_te(shift_conv, x, p, s, b, kernel, bits, zero_free, group, strides, pads, dilations,
                              primfunc_name_hint="graphopt_shift_conv")
        w = bb.emit(relax.op.reshape(relax.op.permute_dims(d, [1, 0]), [m, per_group, *kernel]))
    # ONNX pads are [begin..., end...]: Relax's conv padding has the same order for every rank
    y = bb.emit(_CONV[rank](x, w, strides=strides, padding=pads, dilation=dilations, groups=group))
    channel = [-1] + [1] * rank
    y = bb.emit(relax.op.multiply(y, relax.op.reshape(s, channel)))
    return bb.emit(relax.op.add(y, relax.op.reshape(b, channel)))
