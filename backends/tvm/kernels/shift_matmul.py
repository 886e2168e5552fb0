"""Native kernels for ``ShiftMatMul``: Y = (X @ D) * S with D decoded from packed power-of-two codes.

The format (``graphopt/ops/shift_matmul.py``): P int32 ``[W, N]``, ``c = 31 // bits`` codes per word
packed along K, a code ``sign << (bits-1) | e`` standing for ``±2^-e`` (0 for ``e = 2^(bits-1)-1``
unless ``zero_free``), S float32 ``[N]``.

CPU kernel (``cpu_func``, X flattened to at most ``MAX_ROWS`` rows: decode and small batches). The
converter re-lays P out once at compile time (a constant) into ``[N / chunk, W, chunk]``: each
column chunk's words are one contiguous run, so a chunk streams them with its accumulators
(``rows × chunk`` floats) in registers for the whole of K. Per word vector (``chunk`` columns) and
per code slot j, with integer vector ops only:

    t    = word << (32 - bits·(j+1))                 the code in the top bits: its sign is bit 31
    f    = reinterpret_f32((t & 0x80000000) | (0x3F800000 - ((t >> (9 - bits)) & e_max << 23)))
    acc[m] += x[m, k] · f                            one FMA per row (f = ±2^-e: 127 - e in the exponent)

(the zero code: ``select(e == e_max, 0, f)`` unless ``zero_free``), then ``y = acc · S`` once per
output. No multiply builds a weight; the bytes streamed are ``bits / 30 · 32 / 32`` of float32's
(bits=5: 6x fewer), which is what a batch-1 GEMV is bound by. Chunks are split across the cores
(``T.parallel``); the chunk is ``VECTORS`` SIMD vectors of the target (``cpu.common.vector_lanes``:
AVX2 8 lanes, NEON 4, AVX-512 16), N padded to whole chunks at compile time and the result sliced.

More rows than ``MAX_ROWS`` (prefill): the TE decode (``decoded_weight``) builds D once per call,
then TVM's matmul (graphopt's CPU schedule) runs on it and the scale is a broadcast Mul; CUDA
targets get one thread per output column (``_cuda_func``), decoding each code in registers.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, te, tirx
from tvm.script import tirx as T
from tvm.target import Target

from graphopt import ops
from graphopt.backends.tvm.cpu.common import num_cores, vector_lanes
from graphopt.ops.shift_matmul import OP_NAME, codes_per_word, max_exponent

from ._common import op_attributes

__all__ = ["MAX_ROWS", "VECTORS", "cpu_func", "decoded_weight", "relayout", "shift_matmul"]

MAX_ROWS = 8  # rows of X (batch × sequence) the register kernel takes; more rows decode D once and use the matmul
VECTORS = 2  # SIMD vectors per column chunk (the accumulators of one row)
DTYPE = "float32"
_ONE_BITS = 0x3F800000  # float32 1.0: exponent field 127


def _code_float(word, slot: int, bits: int, zero_free: int):
    """The float ``±2^-e`` of code ``slot`` of int32 ``word``, built from bits (no multiply): the code
    shifted to the top (its sign bit is bit 31), its exponent field moved to bits 23.. and taken from 127."""
    e_mask = max_exponent(bits) << 23
    amount = 32 - bits * (slot + 1)  # a loop variable of an unrolled loop, or an int
    top = word << (tirx.const(amount, "int32") if isinstance(amount, int) else amount.astype("int32"))
    sign = top & tirx.const(-(2**31), "int32")
    e_field = (top >> tirx.const(9 - bits, "int32")) & tirx.const(e_mask, "int32")  # e << 23
    value = tirx.reinterpret(DTYPE, (sign | (tirx.const(_ONE_BITS, "int32") - e_field)).astype("int32"))
    if zero_free:
        return value
    return tirx.Select(e_field == tirx.const(e_mask, "int32"), tirx.const(0.0, DTYPE), value)


# --- TE: the meaning (kernel tests; the many-rows path) ---------------------------------------------


def decoded_weight(p: te.Tensor, k, bits: int = 5, zero_free: int = 0) -> te.Tensor:
    """D ``[k, N]`` float32 decoded from P: the codes first (their shift depends on the row), then the
    floats from the codes alone (Relax's index normalization would widen arithmetic mixing the two to int64)."""
    per_word = codes_per_word(bits)
    half = 1 << (bits - 1)
    codes = te.compute((k, p.shape[1]), lambda i, n: (p[i // per_word, n] >> ((i % per_word) * bits).astype("int32"))
                       & tirx.const((1 << bits) - 1, "int32"), name="shift_codes")

    def element(i, n):
        code = codes[i, n]
        e = code & tirx.const(half - 1, "int32")
        sign = code >> tirx.const(bits - 1, "int32")
        value = tirx.reinterpret(DTYPE, (sign << tirx.const(31, "int32"))
                                 | (tirx.const(_ONE_BITS, "int32") - (e << tirx.const(23, "int32"))))
        if zero_free:
            return value
        return tirx.Select(e == tirx.const(half - 1, "int32"), tirx.const(0.0, DTYPE), value)

    return te.compute((k, p.shape[1]), element, name="shift_decoded")


@ops.implements(OP_NAME, "tvm", part="te")
def shift_matmul(x: te.Tensor, p: te.Tensor, s: te.Tensor, bits: int = 5, zero_free: int = 0) -> te.Tensor:
    k = x.shape[-1]
    d = decoded_weight(p, k, int(bits), int(zero_free))
    r = te.reduce_axis((0, k), name="k")
    product = te.compute([*x.shape[:-1], p.shape[1]], lambda *i: te.sum(x(*i[:-1], r) * d[r, i[-1]], axis=r),
                         name="shift_product")
    return te.compute(product.shape, lambda *i: product(*i) * s[i[-1]], name="shift_matmul")


# --- the CPU register kernel ---------------------------------------------------------------------------


def relayout(packed: np.ndarray, chunk: int) -> np.ndarray:
    """P ``[W, N]`` (N a multiple of ``chunk``) -> ``[N / chunk, W, chunk]``: each chunk's words contiguous."""
    words, n = packed.shape
    return np.ascontiguousarray(packed.reshape(words, n // chunk, chunk).transpose(1, 0, 2))


def cpu_func(rows: int, k: int, n: int, lanes: int, bits: int = 5, zero_free: int = 0,
             vectors: int = VECTORS) -> tirx.PrimFunc:
    """The CPU kernel for X [rows, k], P re-laid out [n / chunk, W, chunk], S [n]; n a multiple of the chunk."""
    chunk = lanes * vectors
    assert n % chunk == 0, f"N={n} is not padded to whole chunks of {chunk}"
    per_word = codes_per_word(bits)
    words = -(-k // per_word)
    full = k // per_word  # words whose every slot is a row of K
    tail = k - full * per_word
    chunks = n // chunk

    def _decode(word, slot):
        return _code_float(word, slot, bits, zero_free)

    @T.prim_func
    def func(x: T.Buffer((rows, k), DTYPE), p: T.Buffer((chunks, words, chunk), "int32"), s: T.Buffer((n,), DTYPE),
             y: T.Buffer((rows, n), DTYPE)):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        for c in T.parallel(chunks):
            acc = T.decl_buffer((rows, chunk), DTYPE, scope="local")
            f = T.decl_buffer((chunk,), DTYPE, scope="local")
            for m in range(rows):
                for v in T.vectorized(chunk):
                    acc[m, v] = T.float32(0)
            for w in range(full):
                for j in T.unroll(per_word):
                    for v in T.vectorized(chunk):
                        f[v] = _decode(p[c, w, v], j)
                    for m in range(rows):
                        for v in T.vectorized(chunk):
                            acc[m, v] = acc[m, v] + x[m, w * per_word + j] * f[v]
            for j in T.unroll(tail):
                for v in T.vectorized(chunk):
                    f[v] = _decode(p[c, full, v], j)
                for m in range(rows):
                    for v in T.vectorized(chunk):
                        acc[m, v] = acc[m, v] + x[m, full * per_word + j] * f[v]
            for m in range(rows):
                for v in T.vectorized(chunk):
                    y[m, c * chunk + v] = acc[m, v] * s[c * chunk + v]

    return func


def _cuda_func(rows: int, k: int, n: int, bits: int, zero_free: int, block: int = 128) -> tirx.PrimFunc:
    """CUDA: a thread per output column; a warp reads a row of words coalesced and decodes in registers."""
    per_word = codes_per_word(bits)
    words = -(-k // per_word)
    full = k // per_word
    tail = k - full * per_word

    def _decode(word, slot):
        return _code_float(word, slot, bits, zero_free)

    @T.prim_func
    def func(x: T.Buffer((rows, k), DTYPE), p: T.Buffer((words, n), "int32"), s: T.Buffer((n,), DTYPE),
             y: T.Buffer((rows, n), DTYPE)):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        for bx in T.thread_binding((n + block - 1) // block, thread="blockIdx.x"):
            for tx in T.thread_binding(block, thread="threadIdx.x"):
                if bx * block + tx < n:
                    acc = T.decl_buffer((rows,), DTYPE, scope="local")
                    for m in range(rows):
                        acc[m] = T.float32(0)
                    for w in range(full):
                        for j in T.unroll(per_word):
                            for m in range(rows):
                                acc[m] = acc[m] + x[m, w * per_word + j] * _decode(p[w, bx * block + tx], j)
                    for j in T.unroll(tail):
                        for m in range(rows):
                            acc[m] = acc[m] + x[m, full * per_word + j] * _decode(p[full, bx * block + tx], j)
                    for m in range(rows):
                        y[m, bx * block + tx] = acc[m] * s[bx * block + tx]

    return func


# --- converter ------------------------------------------------------------------------------------------


def _static_shape(expr) -> list[int] | None:
    values = getattr(expr.ty.shape, "values", None)
    if values is None or not all(isinstance(d, tirx.IntImm) for d in values):
        return None
    return [int(d) for d in values]


def _constant(expr, dtype) -> np.ndarray | None:
    if not isinstance(expr, tvm.ir.GenericConst):
        return None
    array = expr.value.numpy()
    return array if array.dtype == dtype else None


@ops.implements(OP_NAME, "tvm")
def convert(bb: relax.BlockBuilder, inputs: list, attrs: dict) -> relax.Expr:
    x, p, s = inputs[:3]
    attributes = op_attributes(OP_NAME, attrs)
    bits, zero_free = int(attributes["bits"]), int(attributes["zero_free"])
    packed, scale, shape = _constant(p, np.int32), _constant(s, np.float32), _static_shape(x)
    target = Target.current(allow_none=True)
    rows = int(np.prod(shape[:-1], dtype=np.int64)) if shape else 0
    if (packed is None or scale is None or shape is None or str(x.ty.dtype) != DTYPE or target is None
            or not 1 <= rows <= MAX_ROWS or packed.ndim != 2 or scale.shape != (packed.shape[1],)):
        return _dense(bb, x, p, s, shape, bits, zero_free)
    k, n = shape[-1], packed.shape[1]
    x2 = bb.emit(relax.op.reshape(x, [rows, k]))
    if target.kind.name == "cuda":
        func, args, width = _cuda_func(rows, k, n, bits, zero_free), [x2, p, s], n
    else:
        lanes = vector_lanes(target, DTYPE)
        chunk = lanes * VECTORS
        width = -(-n // chunk) * chunk
        padded = np.pad(packed, ((0, 0), (0, width - n)))
        args = [x2, relax.const(relayout(padded, chunk), "int32"), relax.const(np.pad(scale, (0, width - n)), DTYPE)]
        func = cpu_func(rows, k, width, lanes, bits, zero_free)
    gvar = bb.add_func(func.without_attr("global_symbol"), "graphopt_shift_matmul")
    y = bb.emit(relax.call_tir(gvar, args, relax.TensorType([rows, width], DTYPE)))
    if width != n:
        y = bb.emit(relax.op.strided_slice(y, axes=[1], begin=[0], end=[n]))
    return bb.emit(relax.op.reshape(y, [*shape[:-1], n]))


def _dense(bb, x, p, s, shape, bits: int, zero_free: int) -> relax.Expr:
    """D decoded once per call (TE), then TVM's matmul and the scale: many rows, or nothing static."""
    k = shape[-1] if shape else x.ty.shape.values[-1]
    d = bb.emit_te(decoded_weight, p, k, bits, zero_free, primfunc_name_hint="graphopt_shift_decode")
    product = bb.emit(relax.op.matmul(x, d))
    return bb.emit(relax.op.multiply(product, s))


_ = num_cores  # the parallel loop takes every core TVM's runtime gives it
