"""The graphopt op ``ShiftMatMul``: a matmul whose weights are signed powers of two, stored packed.

    Y = (X @ D) * S          D[k, n] = (-1)^sign · 2^(-e), or 0 for the zero code
                             S [N] float32: one scale per output column, applied to the product

X is float32 ``[..., K]``. D is not stored: ``P`` (int32 ``[ceil(K / c), N]``) holds its codes,
``c = 31 // bits`` codes per word (bits=5: six, 30 bits of 32, so a word is never negative and
a weight takes 32/6 = 5.33 bits, 6x fewer bytes than float32). Packing runs along K: code (k, n) is bits
``[bits·j, bits·(j+1))`` of word ``P[k // c, n]``, ``j = k % c``, so a GEMV reads P row by row,
one word per column for c rows of the dense weight. The codes of the last word past K are 0
(and ignored). A code is ``sign << (bits-1) | e``: the high bit is the sign (1: negative), the
low ``bits-1`` bits the exponent ``e`` in ``0 .. 2^(bits-1)-1``, magnitude ``2^(-e)``. With
``zero_free=0`` (DeepShift-PS's ternary set) the largest exponent ``e = 2^(bits-1)-1`` means a
zero weight (either sign), so bits=5 holds ±2^0 .. ±2^-14 and 0; with ``zero_free=1``
(DenseShift's set) every code is a weight: ±2^0 .. ±2^-15.

S is a float32 per-column scale (any value, not only a power of two): a kernel accumulates
``Σ_k x[k] · (±2^-e)`` (a product with ±2^-e only changes x's exponent and sign: a kernel builds
the float from the code's bits, ``sign << 31 | (127 - e) << 23``) and multiplies each output by
``S[n]`` once. The reference and the body do exactly that: ``MatMul(X, D)`` then ``Mul(·, S)``.

Made by the ``shift-linear`` pass (``passes/shift_linear.py``); kernels in
``backends/tvm/kernels/shift_matmul.py``; ``pack`` / ``unpack`` below are the one definition of
the format, used by the pass, the kernels and the tests.
"""

from __future__ import annotations

import numpy as np

from graphopt import ops

__all__ = ["BITS", "OP_NAME", "SHIFT_MATMUL", "codes_per_word", "decode", "encode", "max_exponent", "pack", "shift_matmul_reference",
           "unpack"]

OP_NAME = "ShiftMatMul"
BITS = 5  # the default code width: 1 sign bit + 4 exponent bits (DeepShift's 5-bit weights)
SQNR_KEY = "pkg.graphopt.shift.sqnr_db"  # node metadata: the layer's calibrated output SQNR vs the dense layer


def codes_per_word(bits: int) -> int:
    """Codes in one int32 word: ``31 // bits`` (the sign bit of the word stays 0)."""
    if not 2 <= bits <= 7:
        raise ValueError(f"ShiftMatMul codes are 2..7 bits (exponents to 2^-63), got {bits}")
    return 31 // bits


def max_exponent(bits: int) -> int:
    """The largest exponent field, ``2^(bits-1) - 1`` (the zero code unless zero_free)."""
    return (1 << (bits - 1)) - 1


def pack(codes: np.ndarray, bits: int = BITS) -> np.ndarray:
    """Codes ``[K, N]`` (ints in ``0 .. 2^bits - 1``) -> int32 words ``[ceil(K / c), N]``, packed along K."""
    codes = np.asarray(codes, np.int64)
    if codes.ndim != 2 or codes.size and (codes.min() < 0 or codes.max() >= 1 << bits):
        raise ValueError(f"pack takes a [K, N] array of {bits}-bit codes")
    c = codes_per_word(bits)
    k, n = codes.shape
    words = -(-k // c)
    padded = np.zeros((words * c, n), np.int64)
    padded[:k] = codes
    shifts = (np.arange(c, dtype=np.int64) * bits)[None, :, None]
    return (padded.reshape(words, c, n) << shifts).sum(axis=1).astype(np.int32)


def unpack(packed: np.ndarray, k: int, bits: int = BITS) -> np.ndarray:
    """int32 words ``[W, N]`` -> the first ``k`` codes ``[k, N]`` (int64)."""
    c = codes_per_word(bits)
    words = np.asarray(packed).astype(np.int64)
    shifts = (np.arange(c, dtype=np.int64) * bits)[None, :, None]
    codes = (words[:, None, :] >> shifts) & ((1 << bits) - 1)
    return codes.reshape(-1, words.shape[-1])[:k]


def encode(w: np.ndarray, bits: int = BITS, zero_free: int = 0) -> np.ndarray:
    """DeepShift-Q rounding of weights already relative to their scale: ``±2^-e`` with
    ``e = rint(-log2|w|)`` clamped to the code range; unless ``zero_free``, a weight below half the
    smallest power is the zero code (sign bit clear). Codes ``sign << (bits-1) | e``;
    ``encode(decode(c)) == c`` for every code this makes."""
    w = np.asarray(w, np.float64)
    half, e_top = 1 << (bits - 1), max_exponent(bits)
    largest = e_top if zero_free else e_top - 1
    magnitude = np.abs(w)
    with np.errstate(divide="ignore", invalid="ignore"):
        e = np.rint(-np.log2(np.where(magnitude > 0, magnitude, 1.0)))
    e = np.clip(e, 0, largest).astype(np.int64)
    if not zero_free:  # linear rounding at the edge: below half the smallest power is 0 (one code, no sign)
        e = np.where(magnitude < 2.0 ** -(largest + 1), e_top, e)
    return np.where((w < 0) & ((e != e_top) | bool(zero_free)), half, 0) + e


def decode(codes: np.ndarray, bits: int = BITS, zero_free: int = 0) -> np.ndarray:
    """Codes -> the float32 weights ``±2^-e`` (0 for the zero code unless ``zero_free``)."""
    codes = np.asarray(codes, np.int64)
    half = 1 << (bits - 1)
    sign, e = codes // half, codes % half
    value = np.ldexp(np.float32(1.0), -e).astype(np.float32) * np.where(sign == 1, np.float32(-1), np.float32(1))
    if not zero_free:
        value = np.where(e == half - 1, np.float32(0), value)
    return value.astype(np.float32)


def shift_matmul_reference(x: np.ndarray, p: np.ndarray, s: np.ndarray, *, bits: int = BITS, zero_free: int = 0) -> np.ndarray:
    """The spec: ``(x @ decode(unpack(p, K))) * s`` in x's dtype (float32)."""
    x = np.asarray(x)
    d = decode(unpack(p, x.shape[-1], bits), bits, zero_free)
    product = np.matmul(x, d.astype(x.dtype)).astype(x.dtype)
    return (product * np.asarray(s, x.dtype)).astype(x.dtype)


def _examples():
    rng = np.random.default_rng(20250621)

    def case(shape, k, n, bits=BITS, zero_free=0, codes=None):
        codes = rng.integers(0, 1 << bits, (k, n)) if codes is None else codes
        s = rng.uniform(0.1, 2.0, n).astype(np.float32)
        x = rng.standard_normal((*shape, k)).astype(np.float32)
        return (x, pack(codes, bits), s), {"bits": bits, "zero_free": zero_free}

    edge = np.array([[0, 15, 16, 31, 14, 30]] * 7)  # +1, zero code (or +2^-15), -1, -zero (or -2^-15), ±2^-14
    return [
        case((1,), 24, 8),  # GEMV, K a multiple of 6
        case((2, 3), 13, 5),  # batch axes, K not a multiple of 6 (the last word half used)
        case((4,), 7, 6, codes=edge),  # every special code, ternary
        case((4,), 7, 6, zero_free=1, codes=edge),  # the same codes zero-free: 2^-15 instead of 0
        case((3,), 5, 4, codes=np.full((5, 4), 15)),  # all zeros: Y = 0
        case((2,), 9, 3, bits=3),  # 3-bit codes: ten per word, ±1, ±1/2, ±1/4 and 0
        case((1,), 40, 2, bits=7, zero_free=1),  # 7-bit codes: four per word, exponents to 63
    ]



# ONNX function body text shared by the ops that read this packing (ShiftMatMul, ShiftMatMulInteger,
# ShiftConv): needs P and the attributes bits, zero_free; the slice needs k (int64 [1]).
UNPACK_CODES_BODY = """   b = Constant <value_int: int = @bits> ()
   zf = Constant <value_int: int = @zero_free> ()
   one = Constant <value_int: int = 1> ()
   two = Constant <value_int: int = 2> ()
   zero = Constant <value_int: int = 0> ()
   thirty_one = Constant <value_int: int = 31> ()
   per_word = Div (thirty_one, b)
   slots = Range (zero, per_word, one)
   offsets = Mul (slots, b)
   divisors = Pow (two, offsets)
   column = Constant <value_ints: ints = [-1, 1]> ()
   divisors_c = Reshape (divisors, column)
   words = Cast <to: int = 7> (P)
   axis1 = Constant <value_ints: ints = [1]> ()
   words_u = Unsqueeze (words, axis1)
   shifted = Div (words_u, divisors_c)
   span = Pow (two, b)
   codes3 = Mod (shifted, span)
   codes_all = Flatten <axis: int = 2> (codes3)
"""  # -> codes_all [ceil(K / per_word) * per_word, N], int64
K_FROM_X_BODY = """   shape_x = Shape (X)
   last = Constant <value_ints: ints = [-1]> ()
   end = Constant <value_ints: ints = [9223372036854775807]> ()
   k = Slice (shape_x, last, end)
"""  # -> k: X's last dim
SIGN_AND_EXPONENT_BODY = """   start = Constant <value_ints: ints = [0]> ()
   axis0 = Constant <value_ints: ints = [0]> ()
   codes = Slice (codes_all, start, k, axis0)
   b_minus = Sub (b, one)
   half = Pow (two, b_minus)
   sign = Div (codes, half)
   e = Mod (codes, half)
"""  # -> sign, e [K, N]; half = 2^(bits-1)
FLOAT_WEIGHTS_BODY = """   e_f = Cast <to: int = 1> (e)
   neg_e = Neg (e_f)
   two_f = Constant <value_float: float = 2.0> ()
   magnitude = Pow (two_f, neg_e)
   sign_f = Cast <to: int = 1> (sign)
   two_sign = Mul (two_f, sign_f)
   one_f = Constant <value_float: float = 1.0> ()
   sign_mult = Sub (one_f, two_sign)
   signed = Mul (magnitude, sign_mult)
   e_max = Sub (half, one)
   at_max = Equal (e, e_max)
   ternary = Equal (zf, zero)
   is_zero = And (at_max, ternary)
   zero_f = Constant <value_float: float = 0.0> ()
   d = Where (is_zero, zero_f, signed)
"""  # -> d [K, N] float32: ±2^-e, 0 for the zero code

SHIFT_MATMUL = ops.declare_op(
    ops.OpDef(
        name=OP_NAME,
        doc=("Y = (X @ D) * S: D [K, N] signed powers of two ±2^-e (or 0) decoded from int32 words P packed along K "
             "(31 // bits codes of `bits` bits per word: sign bit, then exponent e); S a float32 scale per column."),
        reference=shift_matmul_reference,
        body="""<domain: "pkg.graphopt", opset_import: ["" : 13]>
ShiftMatMul <bits: int = 5, zero_free: int = 0> (X, P, S) => (Y) {
"""
        + UNPACK_CODES_BODY + K_FROM_X_BODY + SIGN_AND_EXPONENT_BODY + FLOAT_WEIGHTS_BODY + """   product = MatMul (X, d)
   Y = Mul (product, S)
}""",
        examples=_examples,
    )
)


def shift_layers(model) -> dict | None:
    """The report's ``shift`` section: per ShiftMatMul node of ``model`` (an ``onnx_ir.Model``) its calibrated
    SQNR (dB, as ``shift-linear`` stamped it), weights and bytes packed vs float32; None without one."""
    layers = []
    for node in model.graph:
        if node.op_type != OP_NAME or node.domain != ops.DOMAIN:
            continue
        packed = node.inputs[1]
        shape = list(packed.shape) if packed is not None and packed.shape is not None else []
        k = node.inputs[0].shape[-1] if node.inputs[0].shape is not None and len(node.inputs[0].shape) else None
        n = shape[1] if len(shape) == 2 and isinstance(shape[1], int) else None
        if not isinstance(k, int) or n is None or not isinstance(shape[0], int):
            continue
        sqnr = node.metadata_props.get(SQNR_KEY)
        layers.append({"node": node.name, "k": k, "n": n, "bits": node.attributes.get_int("bits", BITS),
                       "zero_free": bool(node.attributes.get_int("zero_free", 0)),
                       "sqnr_db": float(sqnr) if sqnr is not None else None,
                       "packed_bytes": shape[0] * n * 4 + n * 4, "float32_bytes": k * n * 4})
    if not layers:
        return None
    packed = sum(layer["packed_bytes"] for layer in layers)
    dense = sum(layer["float32_bytes"] for layer in layers)
    return {"layers": layers, "packed_bytes": packed, "float32_bytes": dense, "ratio": dense / packed}
