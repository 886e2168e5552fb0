"""The integer requantization op ``pkg.graphopt::DyadicRequant``: multiply by ``m · 2^-k``, integers only.

    Y = DyadicRequant<out_bits>(X, Multiplier, Shift)
      = clip(floor((X · M + floor(2^K / 2)) / 2^K), -2^(out_bits-1), 2^(out_bits-1) - 1)

``X`` int32 (values at scale ``s_in``); ``Multiplier`` (M) and ``Shift`` (K) int32 tensors that
broadcast against X: a scalar for a per-tensor ratio, shape ``[C]`` for a per-channel one on the
last axis. ``Y`` int32 at scale ``s_out`` with ``M · 2^-K ≈ s_in / s_out``: a float rescale done as
one integer multiply, a rounding add and one floor shift (I-ViT / I-BERT's dyadic numbers).
Rounding is half up (``+2^(K-1)`` then floor), not QuantizeLinear's half to even; ``out_bits=8``
/ ``16`` saturate to int8 / int16 like QuantizeLinear, ``32`` only to the int32 range.

Widths: the product and the rounding add are computed in **int64**. ``dyadic_multiplier`` keeps
|M| <= 2^30 and 0 <= K <= 62, so |X · M| + 2^(K-1) < 2^62 for every int32 X.

Why: integer-only chaining (``int8-linear`` accumulators to int8 activations, the residual
stream's rescaling, the ``integer-chain`` pass) needs a rescale without float; the float scales
exist only in the passes, which hand the op integers.
"""

from __future__ import annotations

import numpy as np

from graphopt import ops

__all__ = ["DYADIC_REQUANT", "MAX_SHIFT", "dyadic_multiplier", "dyadic_reference"]

MAX_SHIFT = 62
_MULT_BITS = 30  # |M| <= 2^30

_BODY = """<domain: "pkg.graphopt", opset_import: ["": 18]>
DyadicRequant <out_bits: int = 32> (X, Multiplier, Shift) => (Y) {
    x = Cast <to: int = 7> (X)
    m = Cast <to: int = 7> (Multiplier)
    k = Cast <to: int = 7> (Shift)
    one = Constant <value_int: int = 1> ()
    two = Constant <value_int: int = 2> ()
    d = Pow (two, k)
    half = Div (d, two)
    product = Mul (x, m)
    p = Add (product, half)
    p_mod = Mod (p, d)
    p_exact = Sub (p, p_mod)
    q = Div (p_exact, d)
    bits = Constant <value_int: int = @out_bits> ()
    top_bit = Sub (bits, one)
    limit = Pow (two, top_bit)
    hi = Sub (limit, one)
    lo = Neg (limit)
    q_hi = Min (q, hi)
    q_clipped = Max (q_hi, lo)
    Y = Cast <to: int = 6> (q_clipped)
}"""


def dyadic_reference(x: np.ndarray, multiplier: np.ndarray, shift: np.ndarray, *, out_bits: int = 32) -> np.ndarray:
    """The spec, in int64 numpy."""
    out_bits = int(out_bits)
    if not 2 <= out_bits <= 32:
        raise ValueError(f"DyadicRequant needs 2 <= out_bits <= 32, got {out_bits}")
    k = np.asarray(shift).astype(np.int64)
    if k.size and (k.min() < 0 or k.max() > MAX_SHIFT):
        raise ValueError(f"DyadicRequant shifts must be in [0, {MAX_SHIFT}]")
    product = np.asarray(x).astype(np.int64) * np.asarray(multiplier).astype(np.int64)
    q = (product + ((np.int64(1) << k) >> 1)) >> k
    limit = np.int64(1) << (out_bits - 1)
    return np.clip(q, -limit, limit - 1).astype(np.int32)


def dyadic_multiplier(ratio) -> tuple[np.ndarray, np.ndarray]:
    """(M, K) as int32 arrays with ``M · 2^-K ≈ ratio`` (elementwise), |M| <= 2^30, 0 <= K <= 62.

    The relative error is <= 2^-30 for ratios in [2^-32, 2^30); smaller ratios lose relative
    precision (K is capped), larger ones raise: an int32 value times them would not fit anyway.
    """
    r = np.asarray(ratio, np.float64)
    if not np.all(np.isfinite(r)):
        raise ValueError("dyadic_multiplier: ratio must be finite")
    magnitude = np.abs(r)
    if np.any(magnitude >= 2.0**_MULT_BITS):
        raise ValueError(f"dyadic_multiplier: ratio {magnitude.max():g} >= 2^{_MULT_BITS}")
    safe = np.where(magnitude > 0, magnitude, 1.0)
    k = np.clip(_MULT_BITS - np.ceil(np.log2(safe)), 0, MAX_SHIFT).astype(np.int64)
    m = np.rint(r * np.exp2(k.astype(np.float64))).astype(np.int64)
    m = np.clip(m, -(2**_MULT_BITS), 2**_MULT_BITS)
    k = np.where(m == 0, 0, k)
    return m.astype(np.int32), k.astype(np.int32)


def _examples():
    rng = np.random.default_rng(20250621)
    i32 = np.iinfo(np.int32)
    full = rng.integers(i32.min, i32.max, (4, 6), endpoint=True).astype(np.int32)
    m_c, k_c = dyadic_multiplier(rng.uniform(1e-6, 1e-2, 6))
    m_neg, k_neg = dyadic_multiplier(np.array([-0.37, 0.5, -1.0, 3.25, 1e-9, 0.0]))
    m_big, k_big = dyadic_multiplier(np.array(2.0**29 + 12345))
    return [
        # accumulator-range values, per-channel ratios, every output width
        ((rng.integers(-(2**24), 2**24, (2, 3, 6)).astype(np.int32), m_c, k_c), {"out_bits": 8}),
        ((rng.integers(-(2**24), 2**24, (5, 6)).astype(np.int32), m_c, k_c), {"out_bits": 16}),
        ((rng.integers(-(2**24), 2**24, (5, 6)).astype(np.int32), m_c, k_c), {}),
        # the full int32 range (the product needs int64), negative and zero multipliers, K = 0
        ((full, m_neg, k_neg), {}),
        ((full, m_neg, k_neg), {"out_bits": 8}),
        ((full, np.array(1, np.int32), np.array(0, np.int32)), {}),
        ((full, m_big, k_big), {}),
        # exact halves round up (floor(x/2 + 1/2)) on both signs, and saturation at both ends
        ((np.array([-5, -3, -1, 1, 3, 5, i32.min, i32.max], np.int32), np.array(1, np.int32), np.array(1, np.int32)),
         {"out_bits": 2}),
        ((np.array([-1000, -129, -128, 127, 128, 1000], np.int32), np.array(1, np.int32), np.array(0, np.int32)),
         {"out_bits": 8}),
        # the largest shift
        ((full, np.array(2**30, np.int32), np.array(MAX_SHIFT, np.int32)), {}),
    ]


DYADIC_REQUANT = ops.declare_op(
    ops.OpDef(
        name="DyadicRequant",
        doc=__doc__,
        reference=dyadic_reference,
        body=_BODY,
        examples=_examples,
    )
)
