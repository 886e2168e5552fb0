"""Helpers shared by the canonicalization rules (gelu, layer-norm, rms-norm, silu).

Pattern helpers (``either`` for commuted operands, ``reshaped``) and check helpers: each answers
one question a rule's check asks about a matched value (what opset the model has, what constant a
value holds, which axes a ReduceMean reduces, whether a scale covers the normalized axes). Checks
turn a ``None`` or a mismatch into ``MatchResult.fail(reason)``, so every decline says why.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from graphopt.passes.opset_upgrade import default_opset

__all__ = [
    "unique_initializer_name",
    "FLOAT_TYPES",
    "check_affine",
    "check_float",
    "check_opset",
    "check_scalar",
    "constant",
    "default_opset",
    "either",
    "get_scalar",
    "normalized_dims",
    "reduced_axes",
    "reshaped",
    "trailing_axis",
]

FLOAT_TYPES = frozenset({ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE})


def unique_initializer_name(graph: ir.Graph, base: str) -> str:
    """``base``, or ``base_1``, ``base_2``, ... : the first name no initializer of ``graph`` has."""
    name, i = base, 0
    while name in graph.initializers:
        i += 1
        name = f"{base}_{i}"
    return name


def either(op_fn, a, b):
    """``a ∘ b`` or ``b ∘ a`` for a commutative op, as an OrValue (not usable as a pattern's root).

    The matcher commits to the first alternative that matches locally, so at least one operand
    must be a subpattern (a node) or an already-bound variable; two fresh variables could bind
    the wrong way round. Write separate rule variants for those.
    """
    return pattern.OrValue([op_fn(a, b), op_fn(b, a)])


def reshaped(op, value: ir.Value, shape: list[int] | None) -> ir.Value:
    """``value``, or ``Reshape(value, shape)`` when ``check_affine`` asked for one."""
    if shape is None:
        return value
    return op.Reshape(value, op.Constant(value=ir.tensor(np.array(shape, dtype=np.int64))))


def check_opset(context, result: pattern.MatchResult, op_type: str, needed: int) -> bool:
    """Fail ``result`` when the model's default opset predates ``op_type``; True when it is there."""
    have = default_opset(context.model)
    if have >= needed:
        return True
    result.fail(f"{op_type} needs opset >= {needed}, model has {have}; run opset-upgrade")
    return False


def constant(value: ir.Value | None, max_size: int = 64) -> np.ndarray | None:
    """The value's constant contents (initializer or Constant node) up to ``max_size`` elements.

    None otherwise: a graph input with a default initializer can be overridden at run time, so it
    is not constant, and a weight is never loaded just to find it is not a scalar.
    """
    if value is None or value.is_graph_input():
        return None
    try:
        tensor = ir.convenience.get_const_tensor(value)
        if tensor is None or tensor.size > max_size:
            return None
        return tensor.numpy()
    except (ValueError, FileNotFoundError, OSError):
        return None


def _dequantize_parts(value: ir.Value | None) -> tuple[ir.Value, ir.Value, ir.Value | None, int | None] | None:
    """(integers, scale, zero point, axis) when ``value`` is a weight stored as integers and
    dequantized in the graph: ``DequantizeLinear(Wq, s[, zp])`` or ``Mul(Cast(Wq), s)`` (either
    operand order) with constant operands. Structure only: nothing is read."""
    node = None if value is None else value.producer()
    if node is None or node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "DequantizeLinear" and not node.attributes.get_int("block_size", 0):
        zero = node.inputs[2] if len(node.inputs) > 2 else None
        if all(v is not None and ir.convenience.get_const_tensor(v) is not None for v in node.inputs[:2]):
            return node.inputs[0], node.inputs[1], zero, node.attributes.get_int("axis", 1)
        return None
    if node.op_type == "Mul":
        for cast_side, scale in ((node.inputs[0], node.inputs[1]), (node.inputs[1], node.inputs[0])):
            cast = cast_side.producer() if cast_side is not None else None
            if (cast is not None and cast.op_type == "Cast" and cast.domain in ("", "ai.onnx") and scale is not None
                    and cast.inputs[0] is not None and ir.convenience.get_const_tensor(cast.inputs[0]) is not None
                    and ir.convenience.get_const_tensor(scale) is not None):
                return cast.inputs[0], scale, None, None
    return None


def is_dequantized_constant(value: ir.Value | None) -> bool:
    """Whether ``value`` is an integer constant dequantized in the graph (weight-only int8, QDQ weights)."""
    parts = _dequantize_parts(value)
    return parts is not None and parts[0].dtype is not None and parts[0].dtype.is_integer()


def dequantized_constant(value: ir.Value | None, max_size: int) -> np.ndarray | None:
    """The float32 weights of a dequantized integer constant (see ``is_dequantized_constant``), or None."""
    parts = _dequantize_parts(value)
    if parts is None:
        return None
    q, s, zero, axis = (constant(parts[0], max_size), constant(parts[1], max_size),
                        constant(parts[2], max_size) if parts[2] is not None else None, parts[3])
    if q is None or s is None or q.dtype.kind not in "iu":
        return None
    q64, s64 = q.astype(np.float64), s.astype(np.float64)
    z64 = np.zeros(()) if zero is None else zero.astype(np.float64)
    if axis is not None and s64.size > 1:  # DequantizeLinear's per-axis scale and zero point
        shape = [1] * q.ndim
        shape[axis % q.ndim] = -1
        s64, z64 = s64.reshape(shape), (z64.reshape(shape) if z64.size > 1 else z64)
    return ((q64 - z64) * s64).astype(np.float32)


def get_scalar(result: pattern.MatchResult, value: ir.Value | None, what: str, rank: int | None = None) -> float | None:
    """The number in a one-element constant, or None after failing ``result`` with the reason.

    The constant's rank may not exceed ``rank`` (the other operand's; 1 when unknown): a
    ``[1, 1, 1]`` constant would broadcast a rank-2 tensor up, which the fused op does not do.
    """
    array = constant(value)
    if array is None or array.size != 1:
        result.fail(f"{what} is not a constant scalar", value)
        return None
    if array.ndim > (1 if rank is None else rank):
        result.fail(f"{what} has shape {list(array.shape)}, which broadcasts the input to a higher rank", value)
        return None
    return float(array.reshape(()))


def check_scalar(
    result: pattern.MatchResult,
    value: ir.Value | None,
    expected: float,
    what: str,
    rtol: float,
    rank: int | None = None,
) -> bool:
    """Fail ``result`` unless ``value`` is a one-element constant within ``rtol`` of ``expected``."""
    got = get_scalar(result, value, what, rank)
    if got is None:
        return False
    stored = constant(value)
    if stored is not None and stored.dtype.kind == "f":  # a float16 √2 is 1.4140625: its dtype's rounding is not a mismatch
        rtol = max(rtol, float(np.finfo(stored.dtype).eps))
    if not math.isclose(got, expected, rel_tol=rtol, abs_tol=0.0):
        result.fail(f"{what} is {got:.8g}, expected {expected:.8g} (rtol {rtol:g})", value)
        return False
    return True


def check_float(result: pattern.MatchResult, value: ir.Value, op_type: str) -> bool:
    """Fail unless ``value``'s element type is one the canonical float op accepts (unknown passes)."""
    dtype = value.dtype
    if dtype is None or dtype in FLOAT_TYPES:
        return True
    result.fail(f"{op_type} does not accept {dtype.name} inputs", value)
    return False


def reduced_axes(node: ir.Node) -> tuple[list[int] | None, str | None]:
    """(axes, None) for a keepdims ReduceMean over constant axes, else (None, reason).

    Reads the ``axes`` attribute (opset < 18) or the constant second input (opset >= 18).
    """
    keepdims = node.attributes.get_int("keepdims", 1)
    if not keepdims:
        return None, f"{node.op_type} has keepdims=0"
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        axes = constant(node.inputs[1])
        if axes is None:
            return None, f"{node.op_type} axes are not constant"
        return [int(a) for a in axes.reshape(-1)], None
    attr = node.attributes.get("axes")
    if attr is None:
        return None, f"{node.op_type} reduces over all axes (no axes given)"
    return [int(a) for a in attr.as_ints()], None


def trailing_axis(axes: list[int], rank: int | None) -> tuple[int | None, str | None]:
    """The negative start axis when ``axes`` are the last ``len(axes)`` axes, else (None, reason).

    ``[-1]`` gives -1; ``[-2, -1]`` or, with rank 3, ``[1, 2]`` give -2.
    """
    if not axes:
        return None, "no axes are reduced"
    if any(a >= 0 for a in axes):
        if rank is None:
            return None, f"axes {axes} are not negative and the input rank is unknown"
        axes = [a - rank if a >= 0 else a for a in axes]
    count = len(axes)
    if sorted(axes) != list(range(-count, 0)):
        return None, f"reduced axes {axes} are not the last {count} axis(es)"
    return -count, None


def normalized_dims(x: ir.Value, axis: int) -> list[int] | None:
    """The static dims ``x.shape[axis:]`` (ints), or None when any is unknown."""
    if x.shape is None or len(x.shape) < -axis:
        return None
    dims = list(x.shape)[axis:]
    return dims if all(isinstance(d, int) for d in dims) else None


def check_affine(
    result: pattern.MatchResult, what: str, param: ir.Value, x: ir.Value, axis: int, *, same_dtype: bool = True
) -> tuple[bool, list[int] | None]:
    """Can ``param`` (a scale or bias multiplied/added after normalizing) be the fused op's input?

    It must have x's dtype (unless not ``same_dtype``) and a known shape covering exactly the
    normalized axes ``x.shape[axis:]``, possibly after leading ones that keep the rank <= x's. Returns (ok, reshape):
    ``reshape`` is the shape to Reshape ``param`` to when it has such leading ones, else None.
    """
    if same_dtype and param.dtype is not None and x.dtype is not None and param.dtype != x.dtype:
        result.fail(f"{what} dtype {param.dtype.name} differs from the input's {x.dtype.name}", param)
        return False, None
    if param.shape is None:
        result.fail(f"{what} shape is unknown", param)
        return False, None
    dims, count = list(param.shape), -axis
    rank = len(x.shape) if x.shape is not None else None
    if len(dims) > count and (rank is None or len(dims) > rank):
        result.fail(f"{what} shape {dims} has a higher rank than the input, which it broadcasts up", param)
        return False, None
    if len(dims) < count or any(d != 1 for d in dims[: len(dims) - count]):
        result.fail(f"{what} shape {dims} does not cover exactly the last {count} axis(es)", param)
        return False, None
    x_dims = list(x.shape)[axis:] if x.shape is not None else [None] * count
    for p, d in zip(dims[len(dims) - count :], x_dims):
        if p == d or (isinstance(p, int) and p != 1 and not isinstance(d, int)):
            continue  # equal, or a fixed size against an unknown one (the exporter's Mul checked it)
        result.fail(f"{what} shape {dims} does not match the normalized dims {x_dims}", param)
        return False, None
    tail = dims[len(dims) - count :]
    if len(dims) == count:
        return True, None
    if not all(isinstance(d, int) for d in tail):
        result.fail(f"{what} shape {dims} has leading ones and symbolic dims; cannot reshape it", param)
        return False, None
    return True, tail
