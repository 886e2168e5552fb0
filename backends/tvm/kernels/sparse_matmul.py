"""Native kernels for ``SparseInputMatMul`` and ``SparseGatedMatMul``: weight rows of zero activations skipped.

``SparseInputMatMul`` (Y = X @ W, W [K, N] constant), X flattened to M rows:

1. count: ``cnt`` = the channels k where some row of X is nonzero;
2. if ``cnt`` is above the crossover (sparsity below ``dense_below``) every channel is kept, else
   the nonzero ones are compacted (branch-free: ``idx[cnt] = k; cnt += nonzero[k]``), with their x
   values gathered into ``xs``;
3. Y is cut into ``parts`` contiguous stretches of N, one per thread; each thread walks the selected
   rows of W in groups of ``GROUP`` (8) and, chunk by chunk of ``VECTORS`` SIMD vectors, adds
   ``Σ_g xs[m, j+g] · W[idx[j+g], chunk]`` to its stretch of Y (which stays in L1/L2). Every row
   of W is read as one long contiguous run per thread, which is what decode needs: it is bound by
   the bytes of W loaded (a block-by-block walk of short row pieces measured 2-3x slower).

W is padded with zero columns to whole chunks of every part at compile time (it is a constant); the
result is sliced back. ``SparseGatedMatMul`` (Y = A · (X @ Wtᵀ) where A != 0, Wt [N, K] constant)
compacts the columns n whose gate A[:, n] is nonzero and computes only those outputs, ``COLUMNS`` (8)
at a time in parallel over the compacted list: dot products of X's rows with 8 contiguous rows of
Wt, one vector accumulator each (8 FMA chains, x loaded once for all 8), reduced across lanes at
the end (K's remainder scalar); Y is zero elsewhere. One column at a time measured 1.9x slower at
sparsity 0 (29.9 vs 17.4 ms on 4096 x 11008, graphopt's dense MatMul 15.9 ms, loaded machine).

The SIMD width comes from the target (``cpu.common.vector_lanes``: AVX-512 16 fp32 lanes, AVX2 8,
NEON and other LLVM targets 4) and the parts from its cores (``cpu.common.num_cores``, at most 8). CUDA targets get one thread per output column (``_cuda_input_func``,
``_cuda_gated_func``): a warp reads a row of W coalesced, and the skip test on x[k] is uniform across
the warp, so skipped rows cost no memory traffic and no divergence.

The int8 forms (``SparseInputMatMulInt8``, ``SparseGatedMatMulInt8``: int8 W, a float32 scale per
output) run the same loops over int8 weights: the load widens in the vector registers (sign-extend,
convert: ``vpmovsxbd`` + ``vcvtdq2ps`` on x86), the scale multiplies each output once at the end. Same
SIMD width and parts (from the target's fp32 lanes: the accumulators are fp32), same generic LLVM path
for NEON and other targets. CUDA takes their dense TE path (no int8 CUDA kernel yet).

``DENSE_BELOW``: the sparsity below which the input kernel takes its dense loop; measured by
``python -m bench.sparsity_kernel`` (see docs/sparse-kernels.md).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, te, tirx
from tvm.script import tirx as T
from tvm.target import Target

from graphopt import ops
from graphopt.backends.tvm.cpu.common import num_cores, vector_lanes
from graphopt.ops.sparse_matmul import GATED_INT8_OP, GATED_OP, INPUT_INT8_OP, INPUT_OP

__all__ = ["DENSE_BELOW", "MAX_ROWS", "gated_func", "gated_int8_func", "input_func", "input_int8_func"]

DENSE_BELOW = 0.02  # below it the dense loop: within noise of the sparse one at 0-2%, slower above (docs/sparse-kernels.md)
GROUP = 8  # selected rows accumulated per pass over a part of Y (8 read streams; 4 and 16 measured slower)
VECTORS = 4  # SIMD vectors per step of a part (the accumulators of one pass)
COLUMNS = 8  # open columns of the gated kernel per step, sharing each load of x (1 and 4 measured slower)
MAX_ROWS = 8  # rows of X (batch × sequence) the kernels are for: decode and small batches
DTYPE = "float32"
INT8 = "int8"  # the int8 kernels' weight type


def _widened(weight_dtype: str):
    """How a kernel reads one weight as fp32: as is, or widened in the registers (int8: sign-extend, convert)."""
    if weight_dtype == DTYPE:
        return lambda value: value
    return lambda value: T.Cast(DTYPE, value)


def _input_kernel(rows: int, k: int, n: int, lanes: int, parts: int, dense_below: float, weight_dtype: str,
                  scaled: bool) -> tirx.PrimFunc:
    """The CPU kernel of ``SparseInputMatMul`` (fp32 W) or, with a per-output scale, ``SparseInputMatMulInt8``:
    the same count / compact / row-group loops, the weight read through ``_widened``, the scale applied once
    to each part of Y at the end."""
    chunk = lanes * VECTORS
    assert n % (parts * chunk) == 0, f"N={n} is not padded to {parts} parts of whole chunks of {chunk}"
    part = n // parts
    padded = (k + GROUP - 1) // GROUP * GROUP
    dense_count = int((1.0 - dense_below) * k)  # more nonzero channels than this: every row, in order
    widen = _widened(weight_dtype)

    @T.macro
    def body(x, w, scale, y):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        idx = T.decl_buffer((padded,), "int32")
        xs = T.decl_buffer((rows, padded), DTYPE)
        nonzero = T.decl_buffer((k,), "int32")
        cnt = T.decl_buffer((1,), "int32")
        cnt[0] = 0
        for c in range(k):  # count: channel c is nonzero when some row is
            nonzero[c] = 0
            for m in range(rows):
                nonzero[c] = T.max(nonzero[c], T.Cast("int32", x[m, c] != T.float32(0)))
            cnt[0] = cnt[0] + nonzero[c]
        if cnt[0] > dense_count:  # dense: every row in order
            cnt[0] = 0
            for c in range(k):
                nonzero[c] = 1
        else:
            cnt[0] = 0
        for c in range(k):  # compact (branch-free): idx[0:cnt] the selected rows, xs their x
            idx[cnt[0]] = c
            for m in range(rows):
                xs[m, cnt[0]] = x[m, c]
            cnt[0] = cnt[0] + nonzero[c]
        for g in range(padded - cnt[0]):  # the last group's missing rows: row 0 times 0
            idx[cnt[0] + g] = 0
            for m in range(rows):
                xs[m, cnt[0] + g] = T.float32(0)
        for t in T.parallel(parts):  # each part a contiguous stretch of every selected row
            for m in range(rows):
                for c in range(part // chunk):
                    for v in T.vectorized(chunk):
                        y[m, t * part + c * chunk + v] = T.float32(0)
            for j in range((cnt[0] + GROUP - 1) // GROUP):
                for m in range(rows):
                    for c in range(part // chunk):
                        acc = T.decl_buffer((chunk,), DTYPE, scope="local")
                        for v in T.vectorized(chunk):
                            acc[v] = y[m, t * part + c * chunk + v]
                        for g in T.unroll(GROUP):
                            for v in T.vectorized(chunk):
                                acc[v] = acc[v] + xs[m, j * GROUP + g] * widen(w[idx[j * GROUP + g], t * part + c * chunk + v])
                        for v in T.vectorized(chunk):
                            y[m, t * part + c * chunk + v] = acc[v]
            if scaled:  # the per-output scale, once
                for m in range(rows):
                    for c in range(part // chunk):
                        for v in T.vectorized(chunk):
                            y[m, t * part + c * chunk + v] = y[m, t * part + c * chunk + v] * scale[t * part + c * chunk + v]

    if scaled:
        @T.prim_func
        def func(x: T.Buffer((rows, k), DTYPE), w: T.Buffer((k, n), weight_dtype), scale: T.Buffer((n,), DTYPE),
                 y: T.Buffer((rows, n), DTYPE)):
            body(x, w, scale, y)
    else:
        @T.prim_func
        def func(x: T.Buffer((rows, k), DTYPE), w: T.Buffer((k, n), weight_dtype), y: T.Buffer((rows, n), DTYPE)):
            body(x, w, None, y)

    return func


def _gated_kernel(rows: int, k: int, n: int, lanes: int, cols: int, weight_dtype: str, scaled: bool) -> tirx.PrimFunc:
    """The CPU kernel of ``SparseGatedMatMul`` (fp32 Wt) or, with a per-output scale, ``SparseGatedMatMulInt8``:
    the same compact / ``cols``-rows-at-once loops, the weight read through ``_widened``, each open column's
    dot product scaled once."""
    full = k // lanes * lanes
    padded = (n + cols - 1) // cols * cols
    widen = _widened(weight_dtype)

    @T.macro
    def body(a, x, wt, scale, y):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        idx = T.decl_buffer((padded,), "int32")
        cnt = T.decl_buffer((1,), "int32")
        cnt[0] = 0
        for c in range(n):  # Y = 0; compact the open columns (branch-free)
            nonzero = T.decl_buffer((1,), "int32", scope="local")
            nonzero[0] = 0
            for m in range(rows):
                y[m, c] = T.float32(0)
                nonzero[0] = T.max(nonzero[0], T.Cast("int32", a[m, c] != T.float32(0)))
            idx[cnt[0]] = c
            cnt[0] = cnt[0] + nonzero[0]
        for g in range(padded - cnt[0]):  # the last group repeats an open column (same value written twice)
            idx[cnt[0] + g] = idx[T.max(cnt[0] - 1, 0)]
        for j in T.parallel((cnt[0] + cols - 1) // cols):  # ``cols`` rows of Wt at once: x loaded once for all
            acc = T.decl_buffer((rows, cols, lanes), DTYPE, scope="local")
            for m in range(rows):
                for c in T.unroll(cols):
                    for v in T.vectorized(lanes):
                        acc[m, c, v] = T.float32(0)
            for kk in range(full // lanes):
                for m in range(rows):
                    for c in T.unroll(cols):
                        for v in T.vectorized(lanes):
                            acc[m, c, v] = acc[m, c, v] + x[m, kk * lanes + v] * widen(wt[idx[j * cols + c], kk * lanes + v])
            for m in range(rows):
                for c in range(cols):
                    total = T.decl_buffer((1,), DTYPE, scope="local")
                    total[0] = T.float32(0)
                    for v in range(lanes):
                        total[0] = total[0] + acc[m, c, v]
                    for r in range(k - full):
                        total[0] = total[0] + x[m, full + r] * widen(wt[idx[j * cols + c], full + r])
                    if a[m, idx[j * cols + c]] != T.float32(0):
                        y[m, idx[j * cols + c]] = a[m, idx[j * cols + c]] * _scaled(total[0], scale, idx[j * cols + c])

    if scaled:
        @T.prim_func
        def func(a: T.Buffer((rows, n), DTYPE), x: T.Buffer((rows, k), DTYPE), wt: T.Buffer((n, k), weight_dtype),
                 scale: T.Buffer((n,), DTYPE), y: T.Buffer((rows, n), DTYPE)):
            body(a, x, wt, scale, y)
    else:
        @T.prim_func
        def func(a: T.Buffer((rows, n), DTYPE), x: T.Buffer((rows, k), DTYPE), wt: T.Buffer((n, k), weight_dtype),
                 y: T.Buffer((rows, n), DTYPE)):
            body(a, x, wt, None, y)

    return func


def _scaled(total, scale, column):
    """``total`` times the column's scale, or ``total`` alone when the kernel has no scale (fp32 weights)."""
    return total if scale is None else total * scale[column]


def input_func(rows: int, k: int, n: int, lanes: int, parts: int, dense_below: float = DENSE_BELOW) -> tirx.PrimFunc:
    """The CPU kernel of ``SparseInputMatMul`` for X [rows, k], W [k, n]; n a multiple of ``parts × lanes × 4``."""
    return _input_kernel(rows, k, n, lanes, parts, dense_below, DTYPE, scaled=False)


def gated_func(rows: int, k: int, n: int, lanes: int, cols: int = COLUMNS) -> tirx.PrimFunc:
    """The CPU kernel of ``SparseGatedMatMul`` for A [rows, n], X [rows, k], Wt [n, k]."""
    return _gated_kernel(rows, k, n, lanes, cols, DTYPE, scaled=False)


def input_int8_func(rows: int, k: int, n: int, lanes: int, parts: int, dense_below: float = DENSE_BELOW) -> tirx.PrimFunc:
    """The CPU kernel of ``SparseInputMatMulInt8``: ``input_func``'s loops over an int8 W (a widening load,
    sign-extended and converted in the vector registers) and each part of Y scaled once at the end."""
    return _input_kernel(rows, k, n, lanes, parts, dense_below, INT8, scaled=True)


def gated_int8_func(rows: int, k: int, n: int, lanes: int, cols: int = COLUMNS) -> tirx.PrimFunc:
    """The CPU kernel of ``SparseGatedMatMulInt8``: ``gated_func``'s loops over an int8 Wt (widening load),
    each open column's dot product scaled once."""
    return _gated_kernel(rows, k, n, lanes, cols, INT8, scaled=True)


def _cuda_input_func(rows: int, k: int, n: int, block: int = 128) -> tirx.PrimFunc:
    """CUDA ``SparseInputMatMul``: a thread per column; the test on x[:, c] is the same for every thread."""

    @T.prim_func
    def func(x: T.Buffer((rows, k), DTYPE), w: T.Buffer((k, n), DTYPE), y: T.Buffer((rows, n), DTYPE)):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        for bx in T.thread_binding((n + block - 1) // block, thread="blockIdx.x"):
            for tx in T.thread_binding(block, thread="threadIdx.x"):
                acc = T.decl_buffer((rows,), DTYPE, scope="local")
                nonzero = T.decl_buffer((1,), "int32", scope="local")
                for m in range(rows):
                    acc[m] = T.float32(0)
                for c in range(k):
                    nonzero[0] = 0
                    for m in range(rows):
                        nonzero[0] = T.max(nonzero[0], T.Cast("int32", x[m, c] != T.float32(0)))
                    if nonzero[0] > 0 and bx * block + tx < n:
                        for m in range(rows):
                            acc[m] = acc[m] + x[m, c] * w[c, bx * block + tx]
                if bx * block + tx < n:
                    for m in range(rows):
                        y[m, bx * block + tx] = acc[m]

    return func


def _cuda_gated_func(rows: int, k: int, n: int, block: int = 128) -> tirx.PrimFunc:
    """CUDA ``SparseGatedMatMul``: a thread per output column, skipping columns whose gate is zero."""

    @T.prim_func
    def func(a: T.Buffer((rows, n), DTYPE), x: T.Buffer((rows, k), DTYPE), wt: T.Buffer((n, k), DTYPE),
             y: T.Buffer((rows, n), DTYPE)):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        for bx in T.thread_binding((n + block - 1) // block, thread="blockIdx.x"):
            for tx in T.thread_binding(block, thread="threadIdx.x"):
                if bx * block + tx < n:
                    for m in range(rows):
                        acc = T.decl_buffer((1,), DTYPE, scope="local")
                        acc[0] = T.float32(0)
                        if a[m, bx * block + tx] != T.float32(0):
                            for c in range(k):
                                acc[0] = acc[0] + x[m, c] * wt[bx * block + tx, c]
                        y[m, bx * block + tx] = a[m, bx * block + tx] * acc[0]

    return func


# --- the dense meaning as TE (kernel tests; TVM's own schedules) --------------------------------


@ops.implements(INPUT_OP, "tvm", part="te")
def sparse_input_matmul(x: te.Tensor, w: te.Tensor) -> te.Tensor:
    r = te.reduce_axis((0, x.shape[-1]), name="k")
    shape = [*x.shape[:-1], w.shape[1]]
    return te.compute(shape, lambda *i: te.sum(x(*i[:-1], r) * w[r, i[-1]], axis=r), name="sparse_input_matmul")


@ops.implements(GATED_OP, "tvm", part="te")
def sparse_gated_matmul(a: te.Tensor, x: te.Tensor, wt: te.Tensor) -> te.Tensor:
    r = te.reduce_axis((0, x.shape[-1]), name="k")
    product = te.compute(a.shape, lambda *i: te.sum(x(*i[:-1], r) * wt[i[-1], r], axis=r), name="product")
    zero = tirx.const(0, DTYPE)
    return te.compute(a.shape, lambda *i: tirx.Select(a(*i) != zero, a(*i) * product(*i), zero), name="sparse_gated_matmul")


@ops.implements(INPUT_INT8_OP, "tvm", part="te")
def sparse_input_matmul_int8(x: te.Tensor, wq: te.Tensor, scale: te.Tensor) -> te.Tensor:
    r = te.reduce_axis((0, x.shape[-1]), name="k")
    shape = [*x.shape[:-1], wq.shape[1]]
    product = te.compute(shape, lambda *i: te.sum(x(*i[:-1], r) * wq[r, i[-1]].astype(DTYPE), axis=r), name="product")
    return te.compute(shape, lambda *i: product(*i) * scale[i[-1]], name="sparse_input_matmul_int8")


@ops.implements(GATED_INT8_OP, "tvm", part="te")
def sparse_gated_matmul_int8(a: te.Tensor, x: te.Tensor, wtq: te.Tensor, scale: te.Tensor) -> te.Tensor:
    r = te.reduce_axis((0, x.shape[-1]), name="k")
    raw = te.compute(a.shape, lambda *i: te.sum(x(*i[:-1], r) * wtq[i[-1], r].astype(DTYPE), axis=r), name="raw")
    zero = tirx.const(0, DTYPE)
    return te.compute(a.shape, lambda *i: tirx.Select(a(*i) != zero, a(*i) * (raw(*i) * scale[i[-1]]), zero),
                      name="sparse_gated_matmul_int8")


# --- converters ------------------------------------------------------------------------------------


def _static_shape(expr) -> list[int] | None:
    values = getattr(expr.ty.shape, "values", None)
    if values is None or not all(isinstance(d, tirx.IntImm) for d in values):
        return None
    return [int(d) for d in values]


def _weight(expr, dtype=np.float32) -> np.ndarray | None:
    """The constant 2-D weight of ``dtype``, or None (the dense TVM path then)."""
    if not isinstance(expr, tvm.ir.GenericConst):
        return None
    array = expr.value.numpy()
    return array if array.ndim == 2 and array.dtype == dtype else None


def _scale(expr, n: int) -> np.ndarray | None:
    """The constant float32 per-output scale [n], or None."""
    if not isinstance(expr, tvm.ir.GenericConst):
        return None
    array = expr.value.numpy()
    return array if array.shape == (n,) and array.dtype == np.float32 else None


def _rows(x, k: int) -> tuple[list[int], int] | None:
    """X's static shape and its rows (the product of its leading axes) when the kernels take it."""
    shape = _static_shape(x)
    if shape is None or not shape or shape[-1] != k or str(x.ty.dtype) != DTYPE:
        return None
    rows = int(np.prod(shape[:-1], dtype=np.int64))
    return (shape, rows) if 1 <= rows <= MAX_ROWS else None


def _call(bb: relax.BlockBuilder, func, name: str, args: list, rows: int, width: int, shape: list[int], n: int):
    gvar = bb.add_func(func.without_attr("global_symbol"), f"graphopt_{name}")
    y = bb.emit(relax.call_tir(gvar, args, relax.TensorType([rows, width], DTYPE)))
    if width != n:
        y = bb.emit(relax.op.strided_slice(y, axes=[1], begin=[0], end=[n]))
    return bb.emit(relax.op.reshape(y, [*shape[:-1], n]))


def _input_layout(target: Target, n: int) -> tuple[int, int, int]:
    """The input kernel's SIMD lanes, parts (threads) and N padded to whole chunks of every part."""
    lanes, parts = vector_lanes(target, DTYPE), max(1, min(num_cores(target), 8))
    step = parts * lanes * VECTORS
    return lanes, parts, (n + step - 1) // step * step


def _padded_columns(array: np.ndarray, width: int, dtype: str) -> relax.Constant:
    """``array`` with zero columns (its last axis) up to ``width``: the padding reads and writes nothing real."""
    pad = [(0, 0)] * (array.ndim - 1) + [(0, width - array.shape[-1])]
    return relax.const(np.pad(array, pad), dtype)


@ops.implements(INPUT_OP, "tvm")
def convert_input(bb: relax.BlockBuilder, inputs: list, attrs: dict) -> relax.Expr:
    x, w = inputs[:2]
    weight = _weight(w)
    taken = _rows(x, weight.shape[0]) if weight is not None else None
    target = Target.current(allow_none=True)
    if taken is None or target is None:  # dynamic shapes, a run-time or non-fp32 weight, many rows
        return bb.emit(relax.op.matmul(x, w))
    (shape, rows), (k, n) = taken, weight.shape
    x2 = bb.emit(relax.op.reshape(x, [rows, k]))
    if target.kind.name == "cuda":
        return _call(bb, _cuda_input_func(rows, k, n), "sparse_input_matmul", [x2, w], rows, n, shape, n)
    lanes, parts, width = _input_layout(target, n)
    padded = _padded_columns(weight, width, DTYPE) if width != n else w
    func = input_func(rows, k, width, lanes, parts)
    return _call(bb, func, "sparse_input_matmul", [x2, padded], rows, width, shape, n)


@ops.implements(INPUT_INT8_OP, "tvm")
def convert_input_int8(bb: relax.BlockBuilder, inputs: list, attrs: dict) -> relax.Expr:
    x, wq, scale = inputs[:3]
    weight = _weight(wq, np.int8)
    scales = _scale(scale, weight.shape[1]) if weight is not None else None
    taken = _rows(x, weight.shape[0]) if scales is not None else None
    target = Target.current(allow_none=True)
    if taken is None or target is None or target.kind.name == "cuda":  # the dense TVM path (no int8 CUDA kernel)
        return bb.emit_te(sparse_input_matmul_int8, x, wq, scale, primfunc_name_hint="graphopt_sparse_input_matmul_int8")
    (shape, rows), (k, n) = taken, weight.shape
    x2 = bb.emit(relax.op.reshape(x, [rows, k]))
    lanes, parts, width = _input_layout(target, n)
    if width != n:
        wq, scale = _padded_columns(weight, width, INT8), _padded_columns(scales, width, DTYPE)
    func = input_int8_func(rows, k, width, lanes, parts)
    return _call(bb, func, "sparse_input_matmul_int8", [x2, wq, scale], rows, width, shape, n)


@ops.implements(GATED_INT8_OP, "tvm")
def convert_gated_int8(bb: relax.BlockBuilder, inputs: list, attrs: dict) -> relax.Expr:
    a, x, wtq, scale = inputs[:4]
    weight = _weight(wtq, np.int8)
    scales = _scale(scale, weight.shape[0]) if weight is not None else None
    taken = _rows(x, weight.shape[1]) if scales is not None else None
    target = Target.current(allow_none=True)
    if (taken is None or target is None or target.kind.name == "cuda"
            or _static_shape(a) != [*taken[0][:-1], weight.shape[0]]):
        return bb.emit_te(sparse_gated_matmul_int8, a, x, wtq, scale, primfunc_name_hint="graphopt_sparse_gated_matmul_int8")
    (shape, rows), (n, k) = taken, weight.shape
    x2 = bb.emit(relax.op.reshape(x, [rows, k]))
    a2 = bb.emit(relax.op.reshape(a, [rows, n]))
    func = gated_int8_func(rows, k, n, vector_lanes(target, DTYPE))
    return _call(bb, func, "sparse_gated_matmul_int8", [a2, x2, wtq, scale], rows, n, shape, n)


@ops.implements(GATED_OP, "tvm")
def convert_gated(bb: relax.BlockBuilder, inputs: list, attrs: dict) -> relax.Expr:
    a, x, wt = inputs[:3]
    weight = _weight(wt)
    taken = _rows(x, weight.shape[1]) if weight is not None else None
    target = Target.current(allow_none=True)
    if taken is None or target is None or _static_shape(a) != [*taken[0][:-1], weight.shape[0]]:
        return bb.emit_te(sparse_gated_matmul, a, x, wt, primfunc_name_hint="graphopt_sparse_gated_matmul")
    (shape, rows), (n, k) = taken, weight.shape
    x2 = bb.emit(relax.op.reshape(x, [rows, k]))
    a2 = bb.emit(relax.op.reshape(a, [rows, n]))
    if target.kind.name == "cuda":
        func = _cuda_gated_func(rows, k, n)
    else:
        func = gated_func(rows, k, n, vector_lanes(target, DTYPE))
    return _call(bb, func, "sparse_gated_matmul", [a2, x2, wt], rows, n, shape, n)
