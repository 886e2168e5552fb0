"""The graphopt op ``ShiftGelu``: I-ViT's integer-only GELU (IntGELU / TVM ``quantized_gelu``).

    GELU(x) ≈ x·σ(1.702x),   σ(1.702x) = e^{1.702(x−m)} / (e^{1.702(x−m)} + e^{−1.702m})

Input ``X``: int32 holding quantized values with scale s (zero point 0). Output ``Y``: int32
``x·σ_int`` with scale ``s·2^-(out_bits-1)``. The 1.702 factor is folded into the scale of the
exponent (as in I-ViT's code), so the op's only scale-dependent attribute is
``x0 = floor(-1/(1.702·s))``, the integer that represents −1.0 in base-2 exponent units. The pass
computes it (and the shift ``n``) in Python; the op itself is integer-only.

Steps (per element; ``m`` per row over the last axis; ``>>`` is floor division by a power of two):

1. ``m = max(max_row(x), 0)`` (``row_max=1``, I-ViT) or ``m = max(x, 0)`` per element
   (``row_max=0``); the exponents ``d = x − m`` and ``−m`` are both ≤ 0.
   (I-ViT uses ``m = max_row(x)``; for a row whose max is negative its ``e^{−1.702m}`` has a
   positive exponent, which the shift exp cannot represent — it would need a shift by up to
   ~200 bits. Clamping m at 0 keeps the identity exact and equals I-ViT on every row with a
   non-negative max. With the row max, an element far below a large row max has both exponents
   under the clamp 2^-n, and σ becomes 1/2 instead of 0: that happens once 2.455·m·s > n. The
   per-element m keeps one of the two exponents at 0, so σ is right up to 2^-n.)
2. ShiftExp (I-ViT, shared with Shiftmax) on each exponent t ≤ 0:
   ``t ← t + (t>>1) − (t>>4)`` (×1.4375 ≈ log₂e); ``t ← max(t, n·x0)``; ``q = floor(t/x0)``,
   ``r = t − q·x0 ∈ (x0, 0]``; ``e = ((r>>1) − x0) << (n − q)``. e ≥ 1.
3. ``sum = min(e_d + e_m, 2^31−1)``; ``f = floor((2^31−1)/sum)``;
   ``σ = floor(e_d·f / 2^(32−out_bits))`` ∈ [0, 2^(out_bits−1)).
4. ``Y = x·σ``.

Widths: everything from step 1 on is computed in **int64** (``e << (n−q)`` and ``e_d·f`` exceed
int32: ``e_d·f`` is up to 2^62). Y is cast back to int32; it fits when |x| < 2^(32−out_bits).
The pass picks ``n`` so that ``2·(−x0)·2^n < 2^31`` and the clamp in step 3 never bites.
"""

from __future__ import annotations

import numpy as np

from graphopt import ops

__all__ = ["SHIFT_GELU", "shift_exp", "shift_gelu_reference"]

_INT31 = 2**31 - 1


def _floor_shift(t: np.ndarray, k: int) -> np.ndarray:
    return np.right_shift(t, k)  # arithmetic shift on int64: floor division by 2^k


def shift_exp(t: np.ndarray, x0: int, n: int) -> np.ndarray:
    """I-ViT ShiftExp of int64 ``t ≤ 0`` (scale s, ``x0 = floor(-1/s)``): ≈ e^{t·s}·(−x0)·2^n, in int64."""
    t = t + _floor_shift(t, 1) - _floor_shift(t, 4)
    t = np.maximum(t, np.int64(n) * x0)
    q = np.floor_divide(t, x0)
    r = t - q * x0
    return np.left_shift(_floor_shift(r, 1) - x0, np.int64(n) - q)


def shift_gelu_reference(x: np.ndarray, *, x0: int, n: int = 23, out_bits: int = 8, row_max: int = 1) -> np.ndarray:
    """The spec: I-ViT IntGELU on int32 ``x`` (see the module docstring), int32 output."""
    x0, n, out_bits, row_max = int(x0), int(n), int(out_bits), int(row_max)
    if x0 > -1:
        raise ValueError(f"x0 must be <= -1, got {x0}")
    xi = np.asarray(x).astype(np.int64)
    m = np.maximum(xi.max(axis=-1, keepdims=True), 0) if row_max else np.maximum(xi, 0)
    e_d = shift_exp(xi - m, x0, n)
    e_m = shift_exp(-m, x0, n)
    total = np.minimum(e_d + e_m, _INT31)
    f = np.floor_divide(np.int64(_INT31), total)
    sigma = np.floor_divide(e_d * f, np.int64(2) ** (32 - out_bits))
    return (xi * sigma).astype(np.int32)


def _examples():
    rng = np.random.default_rng(20250621)
    i32 = np.int32
    cases = [
        ((rng.integers(-127, 128, size=(2, 3, 16)).astype(i32),), {"x0": -8, "n": 23}),  # s≈0.07
        ((rng.integers(-127, 128, size=(4, 64)).astype(i32),), {"x0": -1, "n": 23}),  # large scale
        ((rng.integers(-127, 128, size=(3, 32)).astype(i32),), {"x0": -587, "n": 20}),  # small scale
        ((np.full((2, 8), 5, i32),), {"x0": -8, "n": 23}),  # all-equal rows
        ((np.full((2, 8), -40, i32),), {"x0": -8, "n": 23}),  # all-equal negative rows (max < 0)
        ((np.zeros((3, 7), i32),), {"x0": -8, "n": 23}),  # zeros
        ((np.array([[127, -127, 127, -127], [-127, -127, -127, -127], [127, 127, 127, 127]], i32),), {"x0": -5, "n": 23}),
        ((np.array([[-128, 0, 1, -1, 2, -2, 126, 127]], i32),), {"x0": -12, "n": 15, "out_bits": 16}),
        ((rng.integers(-(2**20), 2**20, size=(2, 16)).astype(i32),), {"x0": -3, "n": 23}),  # large magnitudes
        ((np.array([[2**22, -(2**22), 0, 1]], i32),), {"x0": -100, "n": 23}),
        ((rng.integers(-127, 128, size=(5,)).astype(i32),), {"x0": -8}),  # rank 1, default n
        ((rng.integers(-127, 128, size=(3, 40)).astype(i32),), {"x0": -6, "n": 12, "row_max": 0}),
        ((np.array([[127, -127, 0, 5], [-127, -127, -127, -127]], i32),), {"x0": -30, "n": 15, "row_max": 0}),
    ]
    return cases


SHIFT_GELU = ops.declare_op(
    ops.OpDef(
        name="ShiftGelu",
        doc=(
            "I-ViT ShiftGELU: integer-only GELU(x) ≈ x·σ(1.702x) with a shift-based exp. X: int32 with scale s; "
            "x0 = floor(-1/(1.702·s)); Y: int32 with scale s·2^-(out_bits-1). m = row max over the last axis "
            "clamped at 0 (row_max=1, I-ViT) or max(x, 0) per element (row_max=0). Intermediates in int64."
        ),
        reference=shift_gelu_reference,
        body="""<domain: "pkg.graphopt", opset_import: ["" : 18]>
ShiftGelu <x0: int, n: int = 23, out_bits: int = 8, row_max: int = 1> (X) => (Y) {
   x = Cast <to = 7> (X)
   zero = Constant <value = int64 {0}> ()
   one = Constant <value = int64 {1}> ()
   two = Constant <value = int64 {2}> ()
   sixteen = Constant <value = int64 {16}> ()
   int31 = Constant <value = int64 {2147483647}> ()
   last = Constant <value_ints = [-1]> ()
   start0 = Constant <value_ints = [0]> ()
   endl = Constant <value_ints = [9223372036854775807]> ()
   x0 = Constant <value_int: int = @x0> ()
   n = Constant <value_int: int = @n> ()
   ob = Constant <value_int: int = @out_bits> ()
   rm = Constant <value_int: int = @row_max> ()
   rmax = ReduceMax <keepdims = 1> (x, last)
   m_row = Max (rmax, zero)
   m_elem = Max (x, zero)
   rm_abs = Abs (rm)
   use_row = Min (rm_abs, one)
   use_elem = Sub (one, use_row)
   m_row_w = Mul (m_row, use_row)
   m_elem_w = Mul (m_elem, use_elem)
   m = Add (m_row_w, m_elem_w)
   d = Sub (x, m)
   negm = Neg (m)
   t = Concat <axis = -1> (d, negm)
   t_m2 = Mod <fmod = 0> (t, two)
   t_e2 = Sub (t, t_m2)
   t_h = Div (t_e2, two)
   t_m16 = Mod <fmod = 0> (t, sixteen)
   t_e16 = Sub (t, t_m16)
   t_s = Div (t_e16, sixteen)
   t_a = Add (t, t_h)
   t2 = Sub (t_a, t_s)
   lo = Mul (n, x0)
   t3 = Max (t2, lo)
   r = Mod <fmod = 0> (t3, x0)
   t_q = Sub (t3, r)
   q = Div (t_q, x0)
   r_m2 = Mod <fmod = 0> (r, two)
   r_e2 = Sub (r, r_m2)
   r_h = Div (r_e2, two)
   base = Sub (r_h, x0)
   shift = Sub (n, q)
   base_u = Cast <to = 13> (base)
   shift_u = Cast <to = 13> (shift)
   e_u = BitShift <direction = "LEFT"> (base_u, shift_u)
   e = Cast <to = 7> (e_u)
   width = Shape <start = -1> (x)
   e_d = Slice (e, start0, width, last)
   e_m = Slice (e, width, endl, last)
   e_sum = Add (e_d, e_m)
   total = Min (e_sum, int31)
   f = Div (int31, total)
   one_u = Cast <to = 13> (one)
   thirty_two = Constant <value = int64 {32}> ()
   k = Sub (thirty_two, ob)
   k_u = Cast <to = 13> (k)
   denom_u = BitShift <direction = "LEFT"> (one_u, k_u)
   denom = Cast <to = 7> (denom_u)
   num = Mul (e_d, f)
   sigma = Div (num, denom)
   y = Mul (x, sigma)
   Y = Cast <to = 6> (y)
}""",
        examples=_examples,
    )
)
