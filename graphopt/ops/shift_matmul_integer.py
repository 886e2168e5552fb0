"""The graphopt op ``ShiftMatMulInteger``: integer activations times packed power-of-two weights, exact.

    Y[..., n] = Σ_k X[..., k] · D[k, n]        D[k, n] = (-1)^sign · 2^e, or 0 for the zero code
              = Σ_k ±(X[..., k] << e[k, n])     a shift and an add (or subtract) per weight, no multiply

X is int8 or int32 (integer activations: ``ivit``'s int8 linear-layer inputs), Y int32 (the
accumulator ``MatMulInteger`` would give, so the island's bias Add and requantization follow
unchanged). P is ``ShiftMatMul``'s packing (``graphopt/ops/shift_matmul.py``: ``31 // bits`` codes per
int32 word along K, code ``sign << (bits-1) | e``), but the exponent is a **left** shift: the weight
is the integer ``±2^e``, e in ``0 .. 2^(bits-1)-1`` (bits=5: ±1 .. ±2^15); with ``zero_free=0`` the
largest exponent is the zero code. The float scale that ``ShiftMatMul`` carries as S lives in the
requantization after the accumulator (the pass folds it there), so the op has no float at all.

Exact: the reference sums in int64 and wraps to int32; whoever makes the op keeps
``K · max|X| · 2^e_max`` (plus any bias added after) inside int32 so that never wraps (the
``shift-integer`` pass checks this per layer). The ONNX body decodes D as int64 and runs an int64
``MatMul``; every kernel must match the reference bit for bit.

Made by the ``shift-integer`` pass (``passes/shift_integer.py``); kernels in
``backends/tvm/kernels/shift_matmul_integer.py``.
"""

from __future__ import annotations

import numpy as np

from graphopt import ops
from graphopt.ops.shift_matmul import K_FROM_X_BODY, SIGN_AND_EXPONENT_BODY, UNPACK_CODES_BODY, max_exponent, pack, unpack

__all__ = ["MAX_BITS", "OP_NAME", "integer_weights", "shift_matmul_integer_reference"]

OP_NAME = "ShiftMatMulInteger"
MAX_BITS = 5  # exponents to 15: an int8 input times 2^15 leaves int32 room for K up to 2^8 (the pass sizes e per layer)


def integer_weights(codes: np.ndarray, bits: int = 5, zero_free: int = 0) -> np.ndarray:
    """Codes -> the int64 weights ``±2^e`` (0 for the zero code unless ``zero_free``)."""
    if not 2 <= bits <= MAX_BITS:
        raise ValueError(f"ShiftMatMulInteger codes are 2..{MAX_BITS} bits, got {bits}")
    codes = np.asarray(codes, np.int64)
    half = 1 << (bits - 1)
    sign, e = codes // half, codes % half
    value = np.left_shift(np.int64(1), e) * np.where(sign == 1, -1, 1)
    if not zero_free:
        value = np.where(e == max_exponent(bits), 0, value)
    return value.astype(np.int64)


def shift_matmul_integer_reference(x: np.ndarray, p: np.ndarray, *, bits: int = 5, zero_free: int = 0) -> np.ndarray:
    """The spec: ``x @ integer_weights(unpack(p, K))`` summed in int64, wrapped to int32."""
    x = np.asarray(x)
    d = integer_weights(unpack(p, x.shape[-1], bits), bits, zero_free)
    return np.matmul(x.astype(np.int64), d).astype(np.int32)


def _examples():
    rng = np.random.default_rng(20251206)

    def case(shape, k, n, bits=5, zero_free=0, codes=None, dtype=np.int8):
        codes = rng.integers(0, 1 << bits, (k, n)) if codes is None else codes
        info = np.iinfo(np.int8)
        x = rng.integers(info.min, info.max + 1, (*shape, k)).astype(dtype)
        return (x, pack(codes, bits)), {"bits": bits, "zero_free": zero_free}

    edge = np.array([[0, 15, 16, 31, 14, 30]] * 7)  # +1, zero code (or +2^15), -1, -zero (or -2^15), ±2^14
    extreme = np.full((1, 7), -128, np.int8)  # -128 · -2^15 · 7: the largest magnitudes, still inside int32
    return [
        case((1,), 24, 8),  # GEMV, K a multiple of 6
        case((2, 3), 13, 5),  # batch axes, K not a multiple of 6 (the last word half used)
        case((4,), 7, 6, codes=edge),  # every special code, ternary
        case((4,), 7, 6, zero_free=1, codes=edge),  # the same codes zero-free: 2^15 instead of 0
        ((extreme, pack(np.full((7, 2), 31))), {"bits": 5, "zero_free": 1}),
        case((3,), 5, 4, codes=np.full((5, 4), 15)),  # all zeros: Y = 0
        case((2,), 9, 3, bits=3),  # 3-bit codes: ten per word, ±1, ±2, ±4 and 0
        case((2,), 11, 4, dtype=np.int32),  # int32 activations
    ]


SHIFT_MATMUL_INTEGER = ops.declare_op(
    ops.OpDef(
        name=OP_NAME,
        doc=("Y = X @ D in int32, X int8/int32: D [K, N] integer signed powers of two ±2^e (or 0) decoded from int32 "
             "words P packed along K (ShiftMatMul's packing; e a left shift); each product is a shift, no multiply."),
        reference=shift_matmul_integer_reference,
        body="""<domain: "pkg.graphopt", opset_import: ["" : 13]>
ShiftMatMulInteger <bits: int = 5, zero_free: int = 0> (X, P) => (Y) {
"""
        + UNPACK_CODES_BODY + K_FROM_X_BODY + SIGN_AND_EXPONENT_BODY + """   magnitude = Pow (two, e)
   two_sign = Mul (two, sign)
   sign_mult = Sub (one, two_sign)
   signed = Mul (magnitude, sign_mult)
   e_max = Sub (half, one)
   at_max = Equal (e, e_max)
   ternary = Equal (zf, zero)
   is_zero = And (at_max, ternary)
   d = Where (is_zero, zero, signed)
   x64 = Cast <to: int = 7> (X)
   product = MatMul (x64, d)
   Y = Cast <to: int = 6> (product)
}""",
        examples=_examples,
    )
)
