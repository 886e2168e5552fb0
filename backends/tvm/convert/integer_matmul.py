"""ONNX ``MatMulInteger`` / ``ConvInteger`` -> Relax, choosing the kernel for the current target.

The importer runs conversion inside ``with target:``. For x86 targets with AVX2 and static shapes
the converter emits a pre-scheduled ``call_tir`` (``cpu/x86/avx2_matmul``): constant weights are
packed here in numpy (int8 for the sign-trick kernel when A is int8 without zero points and the
weights avoid -128 — what ``int8-linear`` produces — else int16 minus the zero point), activation
operands are packed inside the kernel. Everything else (CUDA, aarch64, other CPUs, dynamic shapes,
zero points that are not constants) gets the plain int32-accumulating TE kernels of
``generic_integer_matmul``, which dlight (CUDA) or graphopt's CPU rules schedule. aarch64 targets
with the dot-product extension (``+dotprod``) get the sdot kernels of ``cpu/arm/sdot_matmul``
(weights packed here in numpy; the batch dims of a linear layer's A folded into M by a free
reshape; ConvInteger as im2col rows × weights). x86 targets with VNNI (AVX-512 VNNI, or AVX-VNNI
without AVX-512) get the ``vpdpbusd`` kernels of ``cpu/x86/vnni_matmul`` first, with the same
structure as the sdot ones; what they decline (dynamic shapes, zero points that are not constants,
K beyond ``vnni_matmul.MAX_K``) falls to the AVX2 kernels.
The instruction set is read from the *target* (its ``mcpu``/``mattr``, through LLVM), never from the
machine that compiles, so a cross build for an AVX2-only CPU gets AVX2 kernels on a VNNI host.
ONNX's ConvInteger has no TVM converter; ours adds it, for any ``group`` and any number of spatial axes
(a 1-D one runs as the 2-D one over [N, C, 1, L]; grouped and 3-D ones take the generic N-D kernel).
"""

from __future__ import annotations

import functools

import numpy as np
import tvm
from tvm import relax
from tvm.target import codegen

from graphopt.backends.tvm.cpu import dot_matmul
from graphopt.backends.tvm.cpu.arm.sdot_matmul import SDOT
from graphopt.backends.tvm.cpu.common import pad_to
from graphopt.backends.tvm.cpu.x86 import avx2_matmul, avx2_weight_layout
from graphopt.backends.tvm.cpu.x86.vnni_matmul import ISAS as VNNI

from . import generic_integer_matmul as generic

__all__ = [
    "CONVERTERS",
    "convert_conv_integer",
    "convert_matmul_integer",
    "has_avx2",
    "has_dotprod",
    "vnni_isa",
]

INT8_TYPES = ("int8", "uint8")


def _is_x86(target: tvm.target.Target | None) -> bool:
    if target is None or target.kind.name != "llvm":
        return False
    triple = str(target.attrs.get("mtriple", "") or codegen.llvm_get_system_triple())
    return triple.startswith(("x86_64", "i686", "i386"))


def has_avx2(target: tvm.target.Target | None) -> bool:
    """Whether ``target`` is an x86 LLVM target whose CPU has AVX2 (what the packed kernels need)."""
    return _is_x86(target) and bool(codegen.target_has_features("avx2", target))


def vnni_isa(target: tvm.target.Target | None) -> str | None:
    """The widest ``vpdpbusd`` the target's CPU has: "avx512-vnni", "avx-vnni" (256-bit, VEX), or None.

    Read from the target's ``mcpu``/``mattr`` by LLVM (a target without ``mcpu`` is a generic x86-64:
    None), so the choice follows the CPU the code is built for, not the one building it.
    """
    if not _is_x86(target):
        return None
    if codegen.target_has_features("avx512vnni", target) and codegen.target_has_features("avx512bw", target):
        return "avx512-vnni"
    if codegen.target_has_features("avxvnni", target):
        return "avx-vnni"
    return None


def has_dotprod(target: tvm.target.Target | None) -> bool:
    """Whether ``target`` is an aarch64 LLVM target with the dot-product extension (sdot/udot)."""
    if target is None or target.kind.name != "llvm":
        return False
    triple = str(target.attrs.get("mtriple", "") or codegen.llvm_get_system_triple())
    return triple.startswith(("aarch64", "arm64")) and bool(codegen.target_has_features("dotprod", target))


def _constant(expr) -> np.ndarray | None:
    return expr.value.numpy() if isinstance(expr, tvm.ir.expr.Constant) else None


def _static_shape(expr) -> list[int] | None:
    shape = expr.ty.shape
    values = getattr(shape, "values", None)
    if values is None or not all(isinstance(d, tvm.tirx.IntImm) for d in values):
        return None
    return [int(d) for d in values]


def _dtype(expr) -> str:
    return str(expr.ty.dtype)


def _scalar_zero(expr) -> int | None:
    """The zero point as an int when it is absent (0) or a constant holding one value; else None."""
    if expr is None:
        return 0
    value = _constant(expr)
    if value is None or np.unique(value).size > 1:
        return None
    return int(value.reshape(-1)[0]) if value.size else 0


def _input(inputs: list, position: int):
    return inputs[position] if len(inputs) > position else None


@functools.lru_cache(maxsize=256)
def _cached_matmul_func(*args, **kwargs):
    return avx2_matmul.matmul_func(*args, **kwargs)


def _emit_scheduled(bb: relax.BlockBuilder, func, args: list, out_shape: list[int], name: str) -> relax.Expr:
    gvar = bb.add_func(func.without_attr("global_symbol"), name)
    return bb.emit(relax.call_tir(gvar, args, relax.TensorType(out_shape, "int32")))


def _static_int8_operands(a, b, a_zero_expr) -> tuple[list[int], list[int], int] | None:
    """A's and B's static shapes and A's zero point as an int, when the pre-scheduled kernels can take
    them (int8/uint8 operands of rank 2 or more, a scalar constant zero point); else None."""
    a_shape, b_shape = _static_shape(a), _static_shape(b)
    a_zero = _scalar_zero(a_zero_expr)
    if a_shape is None or b_shape is None or a_zero is None or len(a_shape) < 2 or len(b_shape) < 2:
        return None
    if _dtype(a) not in INT8_TYPES or _dtype(b) not in INT8_TYPES:
        return None
    return a_shape, b_shape, a_zero


def _avx2_matmul(bb: relax.BlockBuilder, a, b, a_zero_expr, b_zero_expr) -> relax.Expr | None:
    """The packed AVX2 kernel for this MatMulInteger, or None when its shapes/zero points are not covered."""
    operands = _static_int8_operands(a, b, a_zero_expr)
    if operands is None:
        return None
    a_shape, b_shape, a_zero = operands
    *a_batch, m, _ = a_shape
    *b_batch, _, n = b_shape
    weights = _constant(b)
    if weights is not None and not b_batch:
        b_zero_value = np.zeros((), np.int16) if b_zero_expr is None else _constant(b_zero_expr)
        if b_zero_value is None or b_zero_value.size not in (1, n):
            return None
        b_zero_vector = b_zero_value.reshape(-1).astype(np.int16)
        if _dtype(a) == "int8" and a_zero == 0 and not b_zero_vector.any() and avx2_weight_layout.fits_sign_trick(weights):
            kind, packed = "s8-sign", avx2_weight_layout.pack_int8(weights)
        else:
            kind, packed = "i16", avx2_weight_layout.pack_int16(weights, b_zero_vector)
        func = _cached_matmul_func(
            tuple(a_shape), _dtype(a), packed.shape, str(packed.dtype), kind=kind, a_zero=a_zero, packed_n=n
        )
        return _emit_scheduled(bb, func, [a, relax.const(packed)], [*a_batch, m, n], f"graphopt_int8_matmul_{kind.replace('-', '_')}_avx2")
    b_zero = _scalar_zero(b_zero_expr)
    if b_zero is None or (a_batch and b_batch and a_batch != b_batch):
        return None
    func = _cached_matmul_func(tuple(a_shape), _dtype(a), tuple(b_shape), _dtype(b), kind="i16", a_zero=a_zero, b_zero=b_zero)
    return _emit_scheduled(bb, func, [a, b], [*(a_batch or b_batch), m, n], "graphopt_int8_batch_matmul_i16_avx2")


# The dot-product kernels depend only on their (hashable) arguments, and a model repeats its shapes.
_weight_matmul_func = functools.lru_cache(maxsize=256)(dot_matmul.weight_matmul_func)
_activation_matmul_func = functools.lru_cache(maxsize=256)(dot_matmul.activation_matmul_func)


def _dot_matmul(bb: relax.BlockBuilder, a, b, a_zero_expr, b_zero_expr, isa: dot_matmul.DotInstruction) -> relax.Expr | None:
    """The sdot / vpdpbusd kernel for this MatMulInteger, or None when its shapes/zero points are not covered."""
    operands = _static_int8_operands(a, b, a_zero_expr)
    if operands is None:
        return None
    a_shape, b_shape, a_zero = operands
    *a_batch, m, k = a_shape
    *b_batch, _, n = b_shape
    if isa.max_k is not None and k > isa.max_k:
        return None
    weights = _constant(b)
    if weights is not None and not b_batch:
        b_zero = np.zeros((), np.int64) if b_zero_expr is None else _constant(b_zero_expr)
        if b_zero is None or b_zero.size not in (1, n):
            return None
        packed = dot_matmul.pack_weights(weights, b_zero, _dtype(a), a_zero, isa=isa)
        rows = int(np.prod(a_batch, dtype=np.int64)) * m  # the weights are shared: batch dims are just more rows
        func = _weight_matmul_func(rows, k, n, _dtype(a), col_bias=packed.col_bias is not None,
                                   row_scale=packed.row_scale is not None, isa=isa)
        flat = bb.normalize(relax.op.reshape(a, [rows, k])) if a_batch else a
        args = [flat, relax.const(packed.packed)]
        args += [relax.const(v) for v in (packed.col_bias, packed.row_scale) if v is not None]
        out = _emit_scheduled(bb, func, args, [rows, n], f"graphopt_int8_matmul_{isa.name}")
        return bb.emit(relax.op.reshape(out, [*a_batch, m, n])) if a_batch else out
    b_zero = _scalar_zero(b_zero_expr)
    if b_zero is None or (a_batch and b_batch and a_batch != b_batch):
        return None
    func = _activation_matmul_func(tuple(a_shape), _dtype(a), tuple(b_shape), _dtype(b), a_zero=a_zero, b_zero=b_zero,
                                   isa=isa)
    return _emit_scheduled(bb, func, [a, b], [*(a_batch or b_batch), m, n], f"graphopt_int8_batch_matmul_{isa.name}")


def _per_row(bb: relax.BlockBuilder, zero, a) -> relax.Expr | None:
    """A 1-D per-row a_zero_point [M] as [M, 1], so it broadcasts over A's rows."""
    if zero is None:
        return None
    zero_shape = zero.ty.shape.values
    if len(zero_shape) == 1 and len(a.ty.shape.values) >= 2 and not (isinstance(zero_shape[0], tvm.tirx.IntImm) and zero_shape[0].value == 1):
        return bb.normalize(relax.op.expand_dims(zero, axis=-1))
    return zero


def convert_matmul_integer(bb: relax.BlockBuilder, inputs: list, attrs: dict) -> relax.Expr:
    """ONNX MatMulInteger(A, B[, a_zero_point, b_zero_point]) -> int32."""
    a, b, a_zero, b_zero = (_input(inputs, i) for i in range(4))
    target = tvm.target.Target.current(allow_none=True)
    isa = vnni_isa(target)
    fast = _dot_matmul(bb, a, b, a_zero, b_zero, VNNI[isa]) if isa else None
    if fast is None and has_avx2(target):
        fast = _avx2_matmul(bb, a, b, a_zero, b_zero)
    elif fast is None and has_dotprod(target):
        fast = _dot_matmul(bb, a, b, a_zero, b_zero, SDOT)
    if fast is not None:
        return fast
    args = [a, b] + [z for z in (_per_row(bb, a_zero, a), b_zero) if z is not None]
    a_has, b_has = a_zero is not None, b_zero is not None

    def kernel(a_t, b_t, *zeros):
        zeros = list(zeros)
        return generic.matmul_integer(a_t, b_t, zeros.pop(0) if a_has else None, zeros.pop(0) if b_has else None)

    return bb.emit_te(kernel, *args, primfunc_name_hint="graphopt_int8_matmul")


def _attr(attrs: dict, name: str, default):
    value = attrs.get(name, default)
    if isinstance(value, bytes):
        value = value.decode()
    return list(value) if isinstance(value, tuple | list) else value


def _conv_pads(attrs: dict, spatial: list[int], kernel: list[int], strides: list[int], dilations: list[int]) -> list[int]:
    """[begin..., end...] per spatial axis (2-D: [top, left, bottom, right]) from ``pads`` or ``auto_pad``
    (ONNX's SAME_UPPER / SAME_LOWER / VALID)."""
    auto_pad = _attr(attrs, "auto_pad", "NOTSET")
    if auto_pad in ("NOTSET", ""):
        pads = [int(p) for p in _attr(attrs, "pads", [0] * 2 * len(spatial))]
        return pads
    if auto_pad == "VALID":
        return [0] * 2 * len(spatial)
    begin, end = [], []
    for size, k, s, d in zip(spatial, kernel, strides, dilations, strict=True):
        total = max(0, (-(-size // s) - 1) * s + (k - 1) * d + 1 - size)
        small, large = total // 2, total - total // 2
        begin.append(small if auto_pad == "SAME_UPPER" else large)
        end.append(large if auto_pad == "SAME_UPPER" else small)
    return begin + end


def _dot_conv(
    bb: relax.BlockBuilder, x, weights: np.ndarray, x_zero: int, w_zero: np.ndarray, kernel, strides, dilations, pads,
    isa: dot_matmul.DotInstruction,
) -> relax.Expr:
    """ConvInteger with the sdot / vpdpbusd kernel: im2col rows × the weights as [C·kh·kw, M] columns."""
    m = weights.shape[0]
    packed = dot_matmul.pack_weights(weights.reshape(m, -1).T, w_zero, _dtype(x), x_zero, isa=isa)
    func = dot_matmul.conv_func(_static_shape(x), _dtype(x), x_zero, m, kernel, strides, dilations, pads,
                                col_bias=packed.col_bias is not None, row_scale=packed.row_scale is not None, isa=isa)
    args = [x, relax.const(packed.packed)] + [relax.const(v) for v in (packed.col_bias, packed.row_scale) if v is not None]
    out_shape = dot_matmul.conv_output_shape(_static_shape(x), m, kernel, strides, dilations, pads)
    return _emit_scheduled(bb, func, args, out_shape, f"graphopt_int8_conv_{isa.name}")


def _conv_1d_as_2d(bb: relax.BlockBuilder, x, w, x_zero, w_zero, x_shape, w_shape, kernel, strides, dilations, pads,
                   group: int) -> relax.Expr:
    """A 1-D ConvInteger as the 2-D one over [N, C, 1, L] (free reshapes), so it gets the same kernels."""
    weights, w2_shape = _constant(w), [w_shape[0], w_shape[1], 1, w_shape[2]]
    w2 = relax.const(weights.reshape(w2_shape)) if weights is not None else bb.normalize(relax.op.reshape(w, w2_shape))
    x2 = bb.normalize(relax.op.reshape(x, [x_shape[0], x_shape[1], 1, x_shape[2]]))
    attrs2 = {"kernel_shape": [1, kernel[0]], "strides": [1, strides[0]], "dilations": [1, dilations[0]],
              "pads": [0, pads[0], 0, pads[1]], "group": group}
    out = convert_conv_integer(bb, [x2, w2, x_zero, w_zero], attrs2)
    shape = _static_shape(out)
    return bb.emit(relax.op.reshape(out, [shape[0], shape[1], shape[3]]))


def convert_conv_integer(bb: relax.BlockBuilder, inputs: list, attrs: dict) -> relax.Expr:
    """ONNX ConvInteger(x, w[, x_zero_point, w_zero_point]) -> int32: any ``group``, 1-D, 2-D, 3-D, ...

    2-D with group 1 gets the target's packed kernels; 1-D goes through the 2-D path over [N, C, 1, L];
    grouped (depthwise) and 3-D+ convolutions the generic N-D TE kernel.
    """
    x, w, x_zero, w_zero = (_input(inputs, i) for i in range(4))
    x_shape, w_shape = _static_shape(x), _static_shape(w)
    if x_shape is None or w_shape is None or len(x_shape) < 3 or len(w_shape) != len(x_shape):
        raise ValueError(f"ConvInteger: convolutions with static shapes and 1 or more spatial axes are supported, got x {x.ty}")
    rank = len(x_shape) - 2
    kernel = [int(d) for d in _attr(attrs, "kernel_shape", w_shape[2:])]
    strides = [int(d) for d in _attr(attrs, "strides", [1] * rank)]
    dilations = [int(d) for d in _attr(attrs, "dilations", [1] * rank)]
    group = int(_attr(attrs, "group", 1))
    pads = _conv_pads(attrs, x_shape[2:], kernel, strides, dilations)
    if rank == 1:
        return _conv_1d_as_2d(bb, x, w, x_zero, w_zero, x_shape, w_shape, kernel, strides, dilations, pads, group)
    weights = _constant(w)
    x_zero_value = _scalar_zero(x_zero)
    w_zero_value = np.zeros(1, np.int16) if w_zero is None else _constant(w_zero)
    target = tvm.target.Target.current(allow_none=True)
    dot_isa = VNNI.get(vnni_isa(target)) or (SDOT if has_dotprod(target) else None)
    if (
        dot_isa is not None
        and group == 1
        and rank == 2
        and weights is not None
        and x_zero_value is not None
        and w_zero_value is not None
        and w_zero_value.size in (1, w_shape[0])
        and _dtype(x) in INT8_TYPES
        and _dtype(w) in INT8_TYPES
        and (dot_isa.max_k is None or int(np.prod(w_shape[1:])) <= dot_isa.max_k)
    ):
        return _dot_conv(bb, x, weights, x_zero_value, w_zero_value, kernel, strides, dilations, pads, dot_isa)
    if (
        has_avx2(target)
        and group == 1
        and rank == 2
        and weights is not None
        and x_zero_value is not None
        and w_zero_value is not None
        and _dtype(x) in INT8_TYPES
    ):
        m = w_shape[0]
        flat = weights.reshape(m, -1).astype(np.int16) - w_zero_value.reshape(-1, 1).astype(np.int16)
        k2 = pad_to(flat.shape[1], 2)
        a16 = np.zeros((m, k2), np.int16)
        a16[:, : flat.shape[1]] = flat
        func = avx2_matmul.conv_func(x_shape, _dtype(x), x_zero_value, a16.shape, m, kernel, strides, dilations, pads)
        n, _, h, width = x_shape
        oh = (h + pads[0] + pads[2] - dilations[0] * (kernel[0] - 1) - 1) // strides[0] + 1
        ow = (width + pads[1] + pads[3] - dilations[1] * (kernel[1] - 1) - 1) // strides[1] + 1
        return _emit_scheduled(bb, func, [x, relax.const(a16)], [n, m, oh, ow], "graphopt_int8_conv_i16_avx2")
    args = [x, w] + [z for z in (x_zero, w_zero) if z is not None]
    x_has, w_has = x_zero is not None, w_zero is not None

    def kernel_fn(x_t, w_t, *zeros):
        zeros = list(zeros)
        return generic.conv_integer(
            x_t,
            w_t,
            zeros.pop(0) if x_has else None,
            zeros.pop(0) if w_has else None,
            strides=strides,
            dilations=dilations,
            pads=pads,
            group=group,
        )

    return bb.emit_te(kernel_fn, *args, primfunc_name_hint="graphopt_int8_conv")


CONVERTERS = {"MatMulInteger": convert_matmul_integer, "ConvInteger": convert_conv_integer}
