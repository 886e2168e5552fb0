"""Torch versions of ONNX's elementwise, logical, casting and reducing ops.

Each function takes the node's inputs positionally and its attributes as keywords with ONNX's
defaults, so the builder can call it as ``fn(*inputs, **attributes)``; ``CONVERTERS`` maps op
types to them. Where torch and ONNX differ, the ONNX meaning wins: integer ``Div`` truncates,
``Mod`` follows ``fmod``, ``Pow`` keeps the base's type.
"""

from __future__ import annotations

import functools

import torch

from graphopt.errors import UnsupportedError
from graphopt.fx.dtypes import torch_dtype

__all__ = ["CONVERTERS", "MULTI_OUTPUT"]


def _is_float(x: torch.Tensor) -> bool:
    return x.is_floating_point()


def div(a, b):
    if _is_float(a):
        return a / b
    return torch.div(a, b, rounding_mode="trunc")  # ONNX integer Div truncates toward zero


def mod(a, b, fmod=0):
    # fmod=0: the result takes the divisor's sign (Python %); fmod=1: C fmod (the dividend's)
    return torch.fmod(a, b) if fmod else torch.remainder(a, b)


def pow_(x, y):
    return torch.pow(x, y).to(x.dtype)  # ONNX: the result has the base's type


def cast(x, to, saturate=1, round_mode="up"):
    return x.to(torch_dtype(to))


def cast_like(x, target, saturate=1, round_mode="up"):
    return x.to(target.dtype)


def clip(x, min=None, max=None):  # noqa: A002 - ONNX's input names
    return x if min is None and max is None else torch.clamp(x, min=min, max=max)


def elementwise_min(*xs):
    return functools.reduce(torch.minimum, xs)


def elementwise_max(*xs):
    return functools.reduce(torch.maximum, xs)


def elementwise_sum(*xs):
    return functools.reduce(torch.add, xs)


def is_inf(x, detect_negative=1, detect_positive=1):
    return (torch.isneginf(x) & bool(detect_negative)) | (torch.isposinf(x) & bool(detect_positive))


def leaky_relu(x, alpha=0.01):
    return torch.nn.functional.leaky_relu(x, alpha)


def elu(x, alpha=1.0):
    return torch.nn.functional.elu(x, alpha)


def hard_sigmoid(x, alpha=0.2, beta=0.5):
    return torch.clamp(x * alpha + beta, 0, 1)


def hard_swish(x):
    return x * hard_sigmoid(x, 1 / 6, 0.5)


def identity(x):
    return x


def dropout(x, ratio=None, training_mode=None, seed=None):
    """Inference Dropout: (x, an all-true mask). Training mode draws random masks: refused."""
    if training_mode is not None and bool(training_mode) and (ratio is None or float(ratio) > 0):
        raise UnsupportedError("Dropout with training_mode=true has no torch converter in graphopt.fx")
    return x, torch.ones(x.shape, dtype=torch.bool)


def _axes(x, axes, noop_with_empty_axes):
    """The dims to reduce (from the axes input or attribute); None: all; (): none."""
    if axes is not None and not isinstance(axes, (list, tuple)):
        axes = axes.tolist()
    if axes is None or len(axes) == 0:
        return () if noop_with_empty_axes else tuple(range(x.dim()))
    return tuple(int(a) % max(x.dim(), 1) for a in axes)


def _reduce(reduce, data, axes, keepdims, noop_with_empty_axes, empty=None):
    dims = _axes(data, axes, noop_with_empty_axes)
    if not dims:
        return data
    if empty is not None and any(data.shape[d] == 0 for d in dims):
        # the reduction of an empty set is the identity element (ONNX): torch refuses amax/amin there
        kept = [1 if d in dims else n for d, n in enumerate(data.shape)]
        full = torch.full(kept, empty(data.dtype), dtype=data.dtype)
        return full if keepdims else full.squeeze(dims)
    return reduce(data, dim=dims, keepdim=bool(keepdims))


def _lowest(dtype):
    return False if dtype == torch.bool else -torch.inf if dtype.is_floating_point else torch.iinfo(dtype).min


def _highest(dtype):
    return True if dtype == torch.bool else torch.inf if dtype.is_floating_point else torch.iinfo(dtype).max


def reduce_mean(data, axes=None, keepdims=1, noop_with_empty_axes=0):
    return _reduce(torch.mean, data, axes, keepdims, noop_with_empty_axes)


def reduce_sum(data, axes=None, keepdims=1, noop_with_empty_axes=0):
    return _reduce(torch.sum, data, axes, keepdims, noop_with_empty_axes)


def reduce_max(data, axes=None, keepdims=1, noop_with_empty_axes=0):
    return _reduce(torch.amax, data, axes, keepdims, noop_with_empty_axes, empty=_lowest)


def reduce_min(data, axes=None, keepdims=1, noop_with_empty_axes=0):
    return _reduce(torch.amin, data, axes, keepdims, noop_with_empty_axes, empty=_highest)


def reduce_l2(data, axes=None, keepdims=1, noop_with_empty_axes=0):
    return torch.sqrt(reduce_sum_square(data, axes, keepdims, noop_with_empty_axes))


def reduce_sum_square(data, axes=None, keepdims=1, noop_with_empty_axes=0):
    return _reduce(torch.sum, data * data, axes, keepdims, noop_with_empty_axes)


def reduce_prod(data, axes=None, keepdims=1, noop_with_empty_axes=0):
    for dim in sorted(_axes(data, axes, noop_with_empty_axes), reverse=True):  # torch.prod takes one dim
        data = torch.prod(data, dim=dim, keepdim=bool(keepdims))
    return data


def einsum(*xs, equation):
    return torch.einsum(equation, *xs)


CONVERTERS = {
    "Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": div, "Mod": mod, "Pow": pow_,
    "Neg": torch.neg, "Abs": torch.abs, "Sign": torch.sign, "Reciprocal": torch.reciprocal,
    "Sqrt": torch.sqrt, "Exp": torch.exp, "Log": torch.log, "Erf": torch.erf, "Tanh": torch.tanh,
    "Sigmoid": torch.sigmoid, "Relu": torch.relu, "Sin": torch.sin, "Cos": torch.cos,
    "Floor": torch.floor, "Ceil": torch.ceil, "Round": torch.round,  # torch.round: half to even, as ONNX
    "Softplus": torch.nn.functional.softplus, "LeakyRelu": leaky_relu, "Elu": elu,
    "HardSigmoid": hard_sigmoid, "HardSwish": hard_swish,
    "IsNaN": torch.isnan, "IsInf": is_inf,
    "Equal": torch.eq, "Greater": torch.gt, "GreaterOrEqual": torch.ge, "Less": torch.lt, "LessOrEqual": torch.le,
    "Not": torch.logical_not, "And": torch.logical_and, "Or": torch.logical_or, "Xor": torch.logical_xor,
    "Where": torch.where, "Cast": cast, "CastLike": cast_like, "Clip": clip,
    "Min": elementwise_min, "Max": elementwise_max, "Sum": elementwise_sum,
    "Identity": identity, "Dropout": dropout, "Einsum": einsum,
    "ReduceMean": reduce_mean, "ReduceSum": reduce_sum, "ReduceMax": reduce_max, "ReduceMin": reduce_min,
    "ReduceL2": reduce_l2, "ReduceSumSquare": reduce_sum_square, "ReduceProd": reduce_prod,
}
MULTI_OUTPUT = {"Dropout"}  # converters that return one tensor per node output
