"""Shared pieces of graphopt's TE kernels: int64 constants, numpy broadcasting, attributes, ShiftExp.

Integer kernels must not contain a single float (not in index math, not in casts): every constant
here is built with an explicit integer dtype so that TVM never infers one, and ``>>`` is
``shift_right``, which is an arithmetic (floor) shift on signed integers, like numpy's.

The specs compute in int64, but AVX2 has no 64-bit vector multiply, shift-right or division, so
int64 code is scalarized or emulated by LLVM. ``shift_exp_i32`` is the ShiftExp in int32, exact
whenever ``shift_exp_fits_int32`` holds for the op's attributes (the proof is in its docstring).
TVM emits signed int32 arithmetic as ``nsw`` (overflow is undefined behaviour, not a wrap), so an
int32 step is only used where it provably cannot overflow.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import onnx
import tvm
from tvm import te, tirx

from graphopt import ops

INT64 = "int64"
INT32 = "int32"
INT31 = 2**31 - 1
# the int32 ShiftExp's input floor: exponents below it are clamped by the op anyway (shift_exp_i32)
SHIFT_EXP_T_MIN = -(1 << 29)


def i64(value: int) -> tirx.Expr:
    return tirx.const(int(value), INT64)


def i32(value: int) -> tirx.Expr:
    return tirx.const(int(value), INT32)


def dtype_of(expr) -> str:
    """The dtype of a TIR expression (TVM 0.27 keeps it in the expression's PrimType)."""
    return str(expr.ty.dtype)


def to_i64(expr):
    return expr if dtype_of(expr) == INT64 else expr.astype(INT64)


def floor_shift(value: tirx.Expr, bits) -> tirx.Expr:
    """floor(value / 2^bits) for signed int64 ``value`` (numpy's ``>>``)."""
    return tirx.shift_right(value, i64(bits) if isinstance(bits, int) else bits)


def shift_exp(t: tirx.Expr, x0: int, n: int) -> tirx.Expr:
    """I-ViT ShiftExp of int64 ``t <= 0``: ``((r >> 1) - x0) << (n - q)`` (see graphopt/ops/shift_gelu.py)."""
    t = t + floor_shift(t, 1) - floor_shift(t, 4)
    t = tirx.max(t, i64(n * x0))
    q = tirx.floordiv(t, i64(x0))  # x0 < 0: floor division by a negative constant, as numpy
    r = t - q * i64(x0)
    return tirx.shift_left(floor_shift(r, 1) - i64(x0), i64(n) - q)


def shift_exp_fits_int32(x0: int, n: int, terms: int = 1) -> bool:
    """Whether ``terms`` ShiftExp values summed, and every step of ``shift_exp_i32``, fit int32.

    One value is at most ``|x0|·2^n``, so ``terms·|x0|·2^n < 2^31`` bounds the sum; ``n·|x0| <= 2^29``
    makes the exponent clamp ``n·x0`` lie above ``SHIFT_EXP_T_MIN``'s image (see ``shift_exp_i32``).
    ivit's MiniLM attributes (ShiftGelu x0=-768, n=8; Shiftmax x0=-3, n=15) are far inside.
    """
    return x0 <= -1 and n >= 0 and terms * (-x0) << n < 2**31 and n * -x0 <= 1 << 29


def shift_exp_i32(t: tirx.Expr, x0: int, n: int) -> tirx.Expr:
    """``shift_exp`` in int32, bit-exact with the int64 one for ``t`` in [SHIFT_EXP_T_MIN, 0] when
    ``shift_exp_fits_int32(x0, n)``; callers clamp t to that floor first, which changes nothing:

    - ``g(t) = t + (t>>1) - (t>>4)`` is non-decreasing (g(t+1) - g(t) is 0, 1 or 2) and
      ``g(-2^29) = -2^29 - 2^28 + 2^25 < -2^29 <= n·x0``, so every t <= -2^29 is clamped to ``n·x0``
      by the op's own ``max(g(t), n·x0)``: clamping t at -2^29 first gives the same value.
      On [-2^29, 0], |g(t)| <= 1.5·2^29 < 2^31: no overflow.
    - after the clamp t in [n·x0, 0] and x0 < 0, so t/x0 >= 0 and floor division equals truncating
      division (``truncdiv`` by a constant, which LLVM vectorizes; int64 division it cannot);
      q in [0, n], r = t - q·x0 in (x0, 0].
    - ``(r>>1) - x0`` is in [1, |x0|] and the shift ``n - q`` in [0, n]: e <= |x0|·2^n < 2^31.
    """
    t = t + tirx.shift_right(t, i32(1)) - tirx.shift_right(t, i32(4))
    t = tirx.max(t, i32(n * x0))
    q = tirx.truncdiv(t, i32(x0))
    r = t - q * i32(x0)
    return tirx.shift_left(tirx.shift_right(r, i32(1)) - i32(x0), i32(n) - q)


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
    """(declared attribute names, defaults) of a graphopt op; parsed once (about a hundred DyadicRequants in MiniLM)."""
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
