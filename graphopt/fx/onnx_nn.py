"""Torch versions of ONNX's neural-network ops: MatMul/Gemm, convolutions, pooling, normalizations,
Softmax, Gelu, Resize (``CONVERTERS``: op type -> function).

ONNX pads are ``[x1_begin, x2_begin, ..., x1_end, x2_end]`` and may be asymmetric; torch's
convolutions take one symmetric pad per axis, so the input is padded explicitly first
(``spatial_pads``), with the value the op pads with (0, or -inf for MaxPool).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from graphopt.errors import UnsupportedError

__all__ = ["CONVERTERS", "MULTI_OUTPUT", "convolve", "spatial_pads"]


def gemm(a, b, c=None, alpha=1.0, beta=1.0, transA=0, transB=0):  # noqa: N803 - ONNX's names
    product = torch.matmul(a.T if transA else a, b.T if transB else b)
    if alpha != 1.0:
        product = product * alpha
    if c is None:
        return product
    return product + (c * beta if beta != 1.0 else c)


def spatial_pads(x, kernel, strides, dilations, pads, auto_pad) -> list[int]:
    """ONNX pads (begin..., end...) for ``x``'s spatial axes, auto_pad resolved."""
    rank = len(kernel)
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad in ("NOTSET", "VALID"):
        return list(pads) if pads and auto_pad == "NOTSET" else [0] * (2 * rank)
    begin, end = [], []
    for size, k, s, d in zip(x.shape[2:], kernel, strides, dilations):
        total = max(0, (math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size)
        small, large = total // 2, total - total // 2
        begin.append(small if auto_pad == "SAME_UPPER" else large)
        end.append(large if auto_pad == "SAME_UPPER" else small)
    return begin + end


def _pad_input(x, pads, value=0.0):
    rank = len(pads) // 2
    torch_pads = []
    for axis in reversed(range(rank)):  # torch: last axis first
        torch_pads += [pads[axis], pads[rank + axis]]
    return F.pad(x, torch_pads, value=value) if any(torch_pads) else x


def _window(x, w_or_kernel, strides, dilations, pads, auto_pad):
    kernel = list(w_or_kernel)
    rank = len(kernel)
    strides, dilations = list(strides or [1] * rank), list(dilations or [1] * rank)
    return kernel, strides, dilations, spatial_pads(x, kernel, strides, dilations, pads, auto_pad)


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def convolve(x, w, b=None, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None, pads=None, strides=None):
    _, strides, dilations, pads = _window(x, w.shape[2:], strides, dilations, pads, auto_pad)
    return _CONV[w.dim() - 2](_pad_input(x, pads), w, b, stride=strides, dilation=dilations, groups=group)


def conv_transpose(x, w, b=None, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None,
                   output_padding=None, output_shape=None, pads=None, strides=None):
    if output_shape is not None or auto_pad not in ("NOTSET", b"NOTSET"):
        raise UnsupportedError("ConvTranspose with output_shape or auto_pad has no torch converter in graphopt.fx")
    rank = w.dim() - 2
    strides, dilations = list(strides or [1] * rank), list(dilations or [1] * rank)
    y = _CONV_T[rank](x, w, b, stride=strides, output_padding=list(output_padding or [0] * rank),
                      groups=group, dilation=dilations)
    pads = list(pads or [0] * (2 * rank))
    crop = tuple(slice(pads[i], y.shape[2 + i] - pads[rank + i]) for i in range(rank))
    return y[(slice(None), slice(None)) + crop]


def _lowest(dtype):
    return -math.inf if dtype.is_floating_point else torch.iinfo(dtype).min


def _onnx_ceil_crop(y, x, kernel, strides, dilations, pads):
    """Drop output windows that start in the end padding: torch only knows the input was padded
    explicitly, ONNX's ceil_mode never starts a window past the input and its begin pad."""
    rank = len(kernel)
    keep = []
    for i, (size, k, s, d) in enumerate(zip(x.shape[2:], kernel, strides, dilations)):
        count = math.ceil((size + pads[i] + pads[rank + i] - ((k - 1) * d + 1)) / s) + 1
        if (count - 1) * s >= size + pads[i]:
            count -= 1
        keep.append(slice(0, count))
    return y[(slice(None), slice(None), *keep)]


def max_pool(x, auto_pad="NOTSET", ceil_mode=0, dilations=None, kernel_shape=None, pads=None,
             storage_order=0, strides=None):
    kernel, strides, dilations, pads = _window(x, kernel_shape, strides, dilations, pads, auto_pad)
    pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[len(kernel)]
    y = pool(_pad_input(x, pads, _lowest(x.dtype)), kernel, strides, 0, dilations, ceil_mode=bool(ceil_mode))
    return _onnx_ceil_crop(y, x, kernel, strides, dilations, pads) if ceil_mode else y


def average_pool(x, auto_pad="NOTSET", ceil_mode=0, count_include_pad=0, dilations=None, kernel_shape=None,
                 pads=None, strides=None):
    """Window sums over the padded input divided by the count of elements each window covers
    (pads counted or not): the ratio of two torch average pools, whatever divisor torch uses."""
    kernel, strides, dilations, pads = _window(x, kernel_shape, strides, dilations, pads, auto_pad)
    if any(d != 1 for d in dilations):
        raise UnsupportedError("AveragePool with dilations has no torch converter in graphopt.fx")
    pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[len(kernel)]
    ones = torch.ones((1, 1) + tuple(x.shape[2:]), dtype=x.dtype)
    counted = torch.ones_like(_pad_input(ones, pads)) if count_include_pad else _pad_input(ones, pads)
    sums = pool(_pad_input(x, pads), kernel, strides, 0, bool(ceil_mode), True)
    y = sums / pool(counted, kernel, strides, 0, bool(ceil_mode), True)
    return _onnx_ceil_crop(y, x, kernel, strides, dilations, pads) if ceil_mode else y


def global_average_pool(x):
    return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


def global_max_pool(x):
    return x.amax(dim=tuple(range(2, x.dim())), keepdim=True)


def batch_normalization(x, scale, bias, mean, var, epsilon=1e-5, momentum=0.9, training_mode=0):
    if training_mode:
        raise UnsupportedError("BatchNormalization with training_mode=1 has no torch converter in graphopt.fx")
    return F.batch_norm(x, mean, var, scale, bias, False, 0.0, epsilon)


def instance_normalization(x, scale, bias, epsilon=1e-5):
    return F.instance_norm(x, weight=scale, bias=bias, eps=epsilon)


def _stash(x, stash_type):
    return x.float() if stash_type == 1 and x.dtype in (torch.float16, torch.bfloat16) else x


def layer_normalization(x, scale, bias=None, axis=-1, epsilon=1e-5, stash_type=1):
    """(Y, Mean, InvStdDev): the statistics in the stash type, as ONNX's optional outputs."""
    dims = tuple(range(axis % x.dim(), x.dim()))
    wide = _stash(x, stash_type)
    mean = wide.mean(dim=dims, keepdim=True)
    centered = wide - mean
    inv_std = 1 / torch.sqrt((centered * centered).mean(dim=dims, keepdim=True) + epsilon)
    y = (centered * inv_std).to(x.dtype) * scale
    return (y + bias if bias is not None else y), mean, inv_std


def rms_normalization(x, scale, axis=-1, epsilon=1e-5, stash_type=1):
    dims = tuple(range(axis % x.dim(), x.dim()))
    wide = _stash(x, stash_type)
    normalized = (wide / torch.sqrt((wide * wide).mean(dim=dims, keepdim=True) + epsilon)).to(x.dtype)
    return normalized * scale


def softmax(x, axis=-1):
    return torch.softmax(x, dim=axis)


def log_softmax(x, axis=-1):
    return torch.log_softmax(x, dim=axis)


def gelu(x, approximate="none"):
    approximate = approximate.decode() if isinstance(approximate, bytes) else approximate
    return F.gelu(x, approximate=approximate)


CONVERTERS = {
    "MatMul": torch.matmul, "Gemm": gemm, "Conv": convolve, "ConvTranspose": conv_transpose,
    "MaxPool": max_pool, "AveragePool": average_pool, "GlobalAveragePool": global_average_pool,
    "GlobalMaxPool": global_max_pool, "BatchNormalization": batch_normalization,
    "InstanceNormalization": instance_normalization, "LayerNormalization": layer_normalization,
    "RMSNormalization": rms_normalization, "Softmax": softmax, "LogSoftmax": log_softmax, "Gelu": gelu,
}
MULTI_OUTPUT = {"LayerNormalization"}  # converters that return one tensor per node output
