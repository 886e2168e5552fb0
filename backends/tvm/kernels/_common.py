"""Shared pieces of graphopt's TE kernels: int64 constants, numpy broadcasting, attributes, ShiftExp.

Integer kernels must not contain a single float (not in index math, not in casts): every constant
here is built with an explicit integer dtype so that TVM never infers one, and ``>>`` is
``shift_right``, which is an arithmetic (floor) shift on signed integers, like numpy's.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import onnx
import tvm
from tvm import te, tirx

from graphopt import ops

INT64 = "int64"
INT31 = 2**31 - 1


def i64(value: int) -> tirx.Expr:
    return tirx.const(int(value), INT64)


def dtype_of(expr) -> str:
    """The dtype of a TIR expression (TVM 0.27 keeps it in the expression's PrimType)."""
    return str(expr.ty.dtype)


def to_i64(expr):
    return expr if dtype_of(expr) == INT64 else expr.astype(INT64)


def floor_shift(value: tirx.Expr, bits) -> tirx.Expr:
    """floor(value / 2^bits) for signed int64 ``value`` (numpy's ``>>``)."""
    return tirx.shift_right(value, i64(bits) if isinstance(bits, int) else bits)


def shift_exp(t: tirx.Expr, x0: int, n: int) -> tirx.Expr:
    """I-ViT ShiftExp of int64 ``t <= 0``: ``((r >> 1) - x0) << (n - q)`` (see passes/_shiftgelu_op.py)."""
    t = t + floor_shift(t, 1) - floor_shift(t, 4)
    t = tirx.max(t, i64(n * x0))
    q = tirx.floordiv(t, i64(x0))  # x0 < 0: floor division by a negative constant, as numpy
    r = t - q * i64(x0)
    return tirx.shift_left(floor_shift(r, 1) - i64(x0), i64(n) - q)


def broadcast_shape(*shapes: Sequence[tirx.Expr]) -> list[tirx.Expr]:
    """numpy's broadcast of static or symbolic shapes (a symbolic dim wins over a static 1)."""
    rank = max(len(s) for s in shapes)
    out = []
    for axis in range(rank):
        dims = [s[axis - rank + len(s)] for s in shapes if axis - rank + len(s) >= 0]
        not_one = [d for d in dims if not (isinstance(d, tirx.IntImm) and d.value == 1)]
        static = {d.value for d in not_one if isinstance(d, tirx.IntImm)}
        if len(static) > 1:
            raise ValueError(f"shapes {[list(s) for s in shapes]} do not broadcast")
        out.append(not_one[0] if not_one else dims[0])
    return out


def broadcast_load(tensor: te.Tensor, index: Sequence[tirx.Expr]) -> tirx.Expr:
    """``tensor`` read at the (right-aligned) output ``index``; its size-1 axes read element 0."""
    offset = len(index) - len(tensor.shape)
    picked = []
    for axis, dim in enumerate(tensor.shape):
        one = isinstance(dim, tirx.IntImm) and dim.value == 1
        position = index[axis + offset]
        position = position.var if isinstance(position, tirx.IterVar) else position
        picked.append(tirx.const(0, dtype_of(dim)) if one else position)
    return tensor(*picked)


def row_reduce_axis(tensor: te.Tensor, name: str) -> tirx.IterVar:
    return te.reduce_axis((0, tensor.shape[-1]), name=name)


def op_attributes(op_name: str, attrs: dict, required: Sequence[str] = ()) -> dict:
    """The node's attributes over the op's declared defaults; ``tvm_custom`` (importer data) dropped.

    TVM's ONNX importer hands only the attributes the node carries; the defaults live in the op's
    ONNX function signature (``graphopt.ops.get_op(name).attributes``).
    """
    declared, defaults = _declared_attributes(op_name)
    merged = dict(defaults)
    known = set(declared) | set(required)
    for name, value in attrs.items():
        if name == "tvm_custom":
            continue
        if name not in known:
            raise ValueError(f"{op_name}: unknown attribute {name!r} (known: {sorted(known)})")
        merged[name] = value.decode() if isinstance(value, bytes) else value
    missing = [name for name in required if name not in merged]
    if missing:
        raise ValueError(f"{op_name}: required attribute(s) {missing} missing")
    return merged


@functools.cache
def _declared_attributes(op_name: str) -> tuple[frozenset, dict]:
    """(declared attribute names, defaults) of a graphopt op; parsed once (132 DyadicRequants in MiniLM)."""
    declared = ops.get_op(op_name).attributes
    defaults = {name: onnx.helper.get_attribute_value(proto) for name, proto in declared.items() if _has_value(proto)}
    return frozenset(declared), defaults


def _has_value(proto: onnx.AttributeProto) -> bool:
    field = {onnx.AttributeProto.INT: "i", onnx.AttributeProto.FLOAT: "f", onnx.AttributeProto.STRING: "s"}.get(proto.type)
    return field is not None and proto.HasField(field)


def emit_kernel(bb: tvm.relax.BlockBuilder, te_fn, args: Sequence, name: str, attrs: dict) -> tvm.relax.Expr:
    """``bb.emit_te`` with graphopt's PrimFunc naming (``graphopt_<op>``), so profiles and schedules can find it."""
    return bb.emit_te(te_fn, *args, primfunc_name_hint=f"graphopt_{name}", **attrs)


def constant_scalar(expr) -> int | None:
    """The integer value of a one-element integer Relax constant (any rank), else None."""
    if not isinstance(expr, tvm.ir.GenericConst):
        return None
    array = expr.value.numpy()
    if array.size != 1 or array.dtype.kind not in "iu":
        return None
    return int(array.reshape(-1)[0])
