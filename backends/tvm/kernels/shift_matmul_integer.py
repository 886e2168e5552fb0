"""Native kernels for ``ShiftMatMulInteger``: int32 Y = X @ D, X int8/int32, D = ±2^e decoded from packed codes.

The format (``graphopt/ops/shift_matmul_integer.py``): ``ShiftMatMul``'s packing, the exponent a left
shift (weight ``±2^e``; ``e = 2^(bits-1)-1`` the zero code unless ``zero_free``).

CPU kernel (``cpu_func``, static shapes): vectorized over output columns. The converter re-lays P out
once at compile time (a constant) into ``[N / chunk, W, chunk]`` like the float kernel, so a column
chunk streams its words contiguously. Per word vector and code slot j (shared by every row):

    t = word << (32 - bits·(j+1))        the code in the top bits
    s = t >> 31                          0, or -1 for a negative weight (arithmetic shift)
    e = (t >> (32 - bits)) & e_mask      the exponent: the shift amount

and per row m, with x the row's value broadcast to every lane:

    acc[m] += (x << e) ^ s               vpsllvd, vpxor, vpaddd: ±(x << e) without its "+1"

``(t ^ s) - s = ±t``: the ``-s`` of every negative weight is a constant of the column (its number of
negative codes), added once per output instead of once per weight (``neg`` below, computed here from
the codes). A zero code (ternary, only when P holds one) is a ``select`` to 0 and not counted. The
vectors are the target's (``vector_lanes(target, "int32")``: AVX-512 16 lanes, AVX2 8, NEON 4), read
from the target's features, never from the building machine; LLVM emits the variable shifts
(``vpsllvd`` on x86, ``ushl``/``sshl`` on aarch64) from the plain TIR. Rows are taken ``BLOCK_ROWS``
at a time (their accumulators, ``BLOCK_ROWS × chunk`` int32, stay in registers for the whole of K and
share each decode), X padded to whole blocks; chunks are split across the cores. Exact: int32
arithmetic wraps like the reference's int64 sum cast to int32.

AVX-512 targets get a table kernel instead (``permute_func``): per row and code slot, the 32 possible
products of the row's x are built once in two registers, ``T[e] = x << e`` and ``T[16 + e] = -(x << e)``
(zero-code entries 0), and each 16-column vector of codes is an index into them:

    acc[m] += vpermi2d(T_lo[m], word >> bits·j, T_hi[m])    the code's 5 low bits pick ±(x << e): no decode

(``vpermi2d`` reads only the index's low 5 bits, so the next codes above need no mask). That is one
shift per 16 weights shared by the rows, and a permute and an add per row, against the decode's four
shared ops plus three per row; the table costs ~4 ops per row and slot, shared by ``PERMUTE_VECTORS``
vectors of columns. bits=5 only (32 entries); other widths take the shift kernel.

Other targets (CUDA: dlight schedules it) and dynamic shapes get the TE compute (``shift_matmul_integer``):
the codes, then ``Σ ±(x << e)``.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, te, tirx
from tvm.script import tirx as T
from tvm.target import Target, codegen

from graphopt import ops
from graphopt.backends.tvm.cpu.common import is_cpu_target, vector_lanes
from graphopt.ops.shift_matmul import codes_per_word, max_exponent, unpack
from graphopt.ops.shift_matmul_integer import OP_NAME

from ._common import op_attributes
from .shift_matmul import relayout

__all__ = ["BLOCK_ROWS", "PERMUTE_VECTORS", "VECTORS", "cpu_func", "negative_counts", "permute_func", "shift_matmul_integer"]

VECTORS = 2  # SIMD vectors per column chunk
BLOCK_ROWS = 4  # rows sharing one decode, their accumulators in registers (4 x 2 vectors)
ACC = "int32"
PERMUTE_VECTORS = 4  # 16-lane vectors of columns per chunk of the AVX-512 table kernel (R·4 accumulators + 2R tables)
_PERMUTE = "llvm.x86.avx512.vpermi2var.d.512"


def _shifted_term(x, word, slot: int, bits: int, zero_free: int):
    """``(x << e) ^ s`` for code ``slot`` of ``word`` (int32 vectors); 0 for the zero code unless ``zero_free``."""
    amount = 32 - bits * (slot + 1)  # a loop variable of an unrolled loop, or an int
    top = word << (tirx.const(amount, ACC) if isinstance(amount, int) else amount.astype(ACC))
    sign = top >> tirx.const(31, ACC)
    e = (top >> tirx.const(32 - bits, ACC)) & tirx.const((1 << (bits - 1)) - 1, ACC)
    term = (x << e) ^ sign
    if zero_free:
        return term
    return tirx.Select(e == tirx.const(max_exponent(bits), ACC), tirx.const(0, ACC), term)


# --- TE: the meaning (other targets, dynamic shapes, the kernel tests) ------------------------------


@ops.implements(OP_NAME, "tvm", part="te")
def shift_matmul_integer(x: te.Tensor, p: te.Tensor, bits: int = 5, zero_free: int = 0) -> te.Tensor:
    bits, zero_free = int(bits), int(zero_free)
    per_word, half = codes_per_word(bits), 1 << (bits - 1)
    k = x.shape[-1]
    codes = te.compute((k, p.shape[1]), lambda i, n: (p[i // per_word, n] >> ((i % per_word) * bits).astype(ACC))
                       & tirx.const((1 << bits) - 1, ACC), name="shift_codes")
    r = te.reduce_axis((0, k), name="k")

    def term(i, n):
        code = codes[r, n]
        e = code & tirx.const(half - 1, ACC)
        shifted = x(*i, r).astype(ACC) << e
        value = tirx.Select(code >= tirx.const(half, ACC), tirx.const(0, ACC) - shifted, shifted)
        if zero_free:
            return value
        return tirx.Select(e == tirx.const(half - 1, ACC), tirx.const(0, ACC), value)

    return te.compute([*x.shape[:-1], p.shape[1]], lambda *i: te.sum(term(i[:-1], i[-1]), axis=r),
                      name="shift_matmul_integer")


# --- the CPU kernel ---------------------------------------------------------------------------------


def negative_counts(packed: np.ndarray, k: int, bits: int, zero_free: int) -> np.ndarray:
    """Per column, the number of negative (non-zero) weights: the ``-s`` the kernel adds once per output."""
    codes = unpack(packed, k, bits)
    half = 1 << (bits - 1)
    negative = codes >= half
    if not zero_free:
        negative &= (codes % half) != max_exponent(bits)
    return negative.sum(axis=0).astype(np.int32)


def cpu_func(rows: int, k: int, n: int, lanes: int, bits: int = 5, zero_free: int = 0, x_dtype: str = "int8",
             block_rows: int = BLOCK_ROWS, vectors: int = VECTORS) -> tirx.PrimFunc:
    """X [rows, k] (``rows`` a multiple of ``block_rows``), P re-laid out [n / chunk, W, chunk], neg [n] -> Y [rows, n]."""
    chunk = lanes * vectors
    assert n % chunk == 0 and rows % block_rows == 0, (n, chunk, rows, block_rows)
    per_word = codes_per_word(bits)
    words = -(-k // per_word)
    full = k // per_word
    tail = k - full * per_word
    chunks, blocks = n // chunk, rows // block_rows

    def term(x, word, slot):
        return _shifted_term(x.astype(ACC), word, slot, bits, zero_free)

    @T.prim_func
    def func(x: T.Buffer((rows, k), x_dtype), p: T.Buffer((chunks, words, chunk), ACC), neg: T.Buffer((n,), ACC),
             y: T.Buffer((rows, n), ACC)):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        for c in T.parallel(chunks):
            for b in range(blocks):
                acc = T.decl_buffer((block_rows, chunk), ACC, scope="local")
                for m in range(block_rows):
                    for v in T.vectorized(chunk):
                        acc[m, v] = T.int32(0)
                for w in range(full):
                    for j in T.unroll(per_word):
                        for m in range(block_rows):
                            for v in T.vectorized(chunk):
                                acc[m, v] = acc[m, v] + term(x[b * block_rows + m, w * per_word + j], p[c, w, v], j)
                for j in T.unroll(tail):
                    for m in range(block_rows):
                        for v in T.vectorized(chunk):
                            acc[m, v] = acc[m, v] + term(x[b * block_rows + m, full * per_word + j], p[c, full, v], j)
                for m in range(block_rows):
                    for v in T.vectorized(chunk):
                        y[b * block_rows + m, c * chunk + v] = acc[m, v] + neg[c * chunk + v]

    return func


def permute_func(rows: int, k: int, n: int, zero_free: int = 0, x_dtype: str = "int8", block_rows: int = BLOCK_ROWS,
                 vectors: int = PERMUTE_VECTORS) -> tirx.PrimFunc:
    """AVX-512, bits=5: X [rows, k], P re-laid out [n / chunk, W, chunk] (chunk = 16·vectors) -> Y [rows, n]."""
    lanes, bits = 16, 5
    chunk = lanes * vectors
    assert n % chunk == 0 and rows % block_rows == 0, (n, chunk, rows, block_rows)
    per_word = codes_per_word(bits)
    words = -(-k // per_word)
    full = k // per_word
    tail = k - full * per_word
    chunks, blocks = n // chunk, rows // block_rows
    vector = f"{ACC}x{lanes}"

    def positive(x, lane):  # T[e] = x << e; the zero code's entry is 0 unless zero_free
        shifted = x.astype(ACC) << lane
        return shifted if zero_free else tirx.Select(lane == max_exponent(bits), tirx.const(0, ACC), shifted)

    def pick(table, m, codes):
        return T.call_llvm_pure_intrin(vector, _PERMUTE, table[m, T.ramp(0, 1, lanes)], codes, table[m, T.ramp(lanes, 1, lanes)])

    @T.prim_func
    def func(x: T.Buffer((rows, k), x_dtype), p: T.Buffer((chunks, words, chunk), ACC), y: T.Buffer((rows, n), ACC)):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        for c in T.parallel(chunks):
            for b in range(blocks):
                acc = T.decl_buffer((block_rows, chunk), ACC, scope="local")
                table = T.decl_buffer((block_rows, 2 * lanes), ACC, scope="local")
                for m in range(block_rows):
                    for v in T.vectorized(chunk):
                        acc[m, v] = T.int32(0)
                for w in range(full):
                    for j in T.unroll(per_word):
                        for m in range(block_rows):
                            for v in T.vectorized(lanes):
                                table[m, v] = positive(x[b * block_rows + m, w * per_word + j], v)
                            for v in T.vectorized(lanes):
                                table[m, lanes + v] = T.int32(0) - table[m, v]
                        for q in T.unroll(vectors):
                            for m in range(block_rows):
                                acc[m, T.ramp(q * lanes, 1, lanes)] = acc[m, T.ramp(q * lanes, 1, lanes)] + pick(
                                    table, m, p[c, w, T.ramp(q * lanes, 1, lanes)] >> T.broadcast(T.int32(bits) * j, lanes))
                for j in T.unroll(tail):
                    for m in range(block_rows):
                        for v in T.vectorized(lanes):
                            table[m, v] = positive(x[b * block_rows + m, full * per_word + j], v)
                        for v in T.vectorized(lanes):
                            table[m, lanes + v] = T.int32(0) - table[m, v]
                    for q in T.unroll(vectors):
                        for m in range(block_rows):
                            acc[m, T.ramp(q * lanes, 1, lanes)] = acc[m, T.ramp(q * lanes, 1, lanes)] + pick(
                                table, m, p[c, full, T.ramp(q * lanes, 1, lanes)] >> T.broadcast(T.int32(bits) * j, lanes))
                for m in range(block_rows):
                    for v in T.vectorized(chunk):
                        y[b * block_rows + m, c * chunk + v] = acc[m, v]

    return func


def uses_permute(target: Target, bits: int) -> bool:
    """The table kernel: an x86 target with AVX-512F (read from the target, not the building machine), 5-bit codes."""
    return bits == 5 and target.kind.name == "llvm" and bool(codegen.target_has_features("avx512f", target))


# --- converter ------------------------------------------------------------------------------------------


def _static_shape(expr) -> list[int] | None:
    values = getattr(expr.ty.shape, "values", None)
    if values is None or not all(isinstance(d, tirx.IntImm) for d in values):
        return None
    return [int(d) for d in values]


def _constant(expr) -> np.ndarray | None:
    if not isinstance(expr, tvm.ir.GenericConst):
        return None
    array = expr.value.numpy()
    return array if array.dtype == np.int32 and array.ndim == 2 else None


@ops.implements(OP_NAME, "tvm")
def convert(bb: relax.BlockBuilder, inputs: list, attrs: dict) -> relax.Expr:
    x, p = inputs[:2]
    attributes = op_attributes(OP_NAME, attrs)
    bits, zero_free = int(attributes["bits"]), int(attributes["zero_free"])
    packed, shape, target = _constant(p), _static_shape(x), Target.current(allow_none=True)
    x_dtype = str(x.ty.dtype)
    rows = int(np.prod(shape[:-1], dtype=np.int64)) if shape else 0
    if packed is None or shape is None or target is None or not is_cpu_target(target) or rows < 1 \
            or x_dtype not in ("int8", "int32"):
        return bb.emit_te(shift_matmul_integer, x, p, bits, zero_free, primfunc_name_hint="graphopt_shift_matmul_integer")
    k, n = shape[-1], packed.shape[1]
    # a ternary P without a zero code runs the zero-free kernel: the same weights, no select
    codes_zero_free = zero_free or not (unpack(packed, k, bits) % (1 << (bits - 1)) == max_exponent(bits)).any()
    permute = uses_permute(target, bits)
    lanes = 16 if permute else vector_lanes(target, ACC)
    chunk = lanes * (PERMUTE_VECTORS if permute else VECTORS)
    width = -(-n // chunk) * chunk
    block = min(rows, BLOCK_ROWS)
    padded_rows = -(-rows // block) * block
    padded = np.pad(packed, ((0, 0), (0, width - n)))
    x2 = bb.emit(relax.op.reshape(x, [rows, k]))
    if padded_rows != rows:
        x2 = bb.emit(relax.op.nn.pad(x2, [0, padded_rows - rows, 0, 0]))
    weights = [relax.const(relayout(padded, chunk), ACC)]
    if permute:
        func = permute_func(padded_rows, k, width, int(zero_free), x_dtype, block)
    else:
        func = cpu_func(padded_rows, k, width, lanes, bits, int(codes_zero_free), x_dtype, block)
        weights.append(relax.const(np.pad(negative_counts(packed, k, bits, zero_free), (0, width - n)), ACC))
    gvar = bb.add_func(func.without_attr("global_symbol"), "graphopt_shift_matmul_integer")
    y = bb.emit(relax.call_tir(gvar, [x2, *weights], relax.TensorType([padded_rows, width], ACC)))
    if width != n or padded_rows != rows:
        y = bb.emit(relax.op.strided_slice(y, axes=[0, 1], begin=[0, 0], end=[rows, n]))
    return bb.emit(relax.op.reshape(y, [*shape[:-1], n]))
