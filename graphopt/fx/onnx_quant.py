"""Torch versions of the ONNX quantization ops that ``int8-linear`` / ``ivit`` emit, with ONNX
Runtime's exact integer results (eval mode).

- ``QuantizeLinear``: ``saturate(round_half_even(x / scale) + zp)``, a float division as ONNX
  Runtime's MLAS kernel does (not a multiply by 1/scale, which rounds differently).
- ``DequantizeLinear``: ``(int32(x) - zp) · scale`` in the scale's type.
- ``MatMulInteger`` / ``ConvInteger``: zero points subtracted, the products summed in float64
  (exact: 8-bit products summed over fewer than 2^37 terms stay below 2^53), then wrapped to int32
  like an int32 accumulator.

Per-axis scales and zero points (1-D, along ``axis``) broadcast over the other axes; blocked
quantization (``block_size``) raises UnsupportedError.
"""

from __future__ import annotations

import torch

from graphopt.errors import UnsupportedError
from graphopt.fx.dtypes import torch_dtype
from graphopt.fx.onnx_nn import convolve

__all__ = ["CONVERTERS", "along", "conv_sum", "matmul_sum"]


def along(param, x, axis):
    """A per-axis parameter (1-D) shaped to broadcast against x along ``axis``; scalars as they are."""
    if param.dim() != 1 or x.dim() <= 1:
        return param
    shape = [1] * x.dim()
    shape[axis % x.dim()] = param.numel()
    return param.reshape(shape)


def _no_blocks(block_size, op):
    if block_size:
        raise UnsupportedError(f"{op} with block_size={block_size} has no torch converter in graphopt.fx")


def quantize_linear(x, y_scale, y_zero_point=None, axis=1, block_size=0, output_dtype=0, saturate=1, precision=0):
    _no_blocks(block_size, "QuantizeLinear")
    if output_dtype:
        dtype = torch_dtype(output_dtype)
    else:
        dtype = y_zero_point.dtype if y_zero_point is not None else torch.uint8
    info = torch.iinfo(dtype)
    q = torch.round(x / along(y_scale, x, axis))
    if y_zero_point is not None:
        q = q + along(y_zero_point, x, axis).to(q.dtype)
    return torch.clamp(q, info.min, info.max).to(dtype)


def dequantize_linear(x, x_scale, x_zero_point=None, axis=1, block_size=0, output_dtype=0):
    _no_blocks(block_size, "DequantizeLinear")
    wide = x.to(torch.int32)
    if x_zero_point is not None:
        wide = wide - along(x_zero_point, x, axis).to(torch.int32)
    return wide.to(x_scale.dtype) * along(x_scale, x, axis)


def _centered(x, zero_point):
    wide = x.to(torch.float64)
    return wide if zero_point is None else wide - zero_point.to(torch.float64)


def _wrap_int32(exact):
    return exact.to(torch.int64).to(torch.int32)


def matmul_sum(a, b, a_zero_point=None, b_zero_point=None):
    """MatMulInteger's exact sum, in float64 (not yet wrapped to int32); train mode wraps it itself."""
    if a_zero_point is not None and a_zero_point.dim() == 1 and a_zero_point.numel() > 1:
        a_zero_point = a_zero_point.unsqueeze(-1)  # one per row of A
    return torch.matmul(_centered(a, a_zero_point), _centered(b, b_zero_point))


def matmul_integer(a, b, a_zero_point=None, b_zero_point=None):
    return _wrap_int32(matmul_sum(a, b, a_zero_point, b_zero_point))


def conv_sum(x, w, x_zero_point=None, w_zero_point=None, **window):
    """ConvInteger's exact sum, in float64 (not yet wrapped to int32)."""
    if w_zero_point is not None and w_zero_point.numel() > 1:
        w_zero_point = w_zero_point.reshape([-1] + [1] * (w.dim() - 1))  # one per output channel
    # padding after the zero point is subtracted: ONNX pads with the zero point, i.e. a 0 term
    return convolve(_centered(x, x_zero_point), _centered(w, w_zero_point), None, **window)


def conv_integer(x, w, x_zero_point=None, w_zero_point=None, **window):
    return _wrap_int32(conv_sum(x, w, x_zero_point, w_zero_point, **window))


CONVERTERS = {
    "QuantizeLinear": quantize_linear, "DequantizeLinear": dequantize_linear,
    "MatMulInteger": matmul_integer, "ConvInteger": conv_integer,
}
