"""The integer-only LayerNorm op: ``pkg.graphopt::IntLayerNorm``, declared once (I-ViT I-LayerNorm).

    IntLayerNorm <shift: int, center: int = 1> (X: int32 [.., d], Mult: int32 [d], Bias: int32 [d]) => (Y: int32 [.., d])

Over the last axis of X (quantized values, e.g. int8 or int16 range, zero point 0), all in int64:

1. ``mean = floor((2·Σx + d) / (2d))``: the integer mean, rounded half up; ``y = x - mean``.
   ``center=0`` skips the mean (``y = x``): the integer **RMSNorm** (``irmsnorm``), where
   ``var = Σx²`` and n is ``x / rms(x)`` in the same units. Every other step is shared.
2. ``var = Σ y²``: a *sum*, not a mean (I-ViT). int64: an int16 input with d = 384 reaches
   384·65534² ≈ 2^40.6, past I-ViT's uint32.
3. Integer Newton square root, I-ViT's exactly: ``k = 2^16``, then exactly 10 iterations of
   ``k = floor((k + floor(var / k)) / 2)``; no early stop.
   *Zero guard*: every iteration keeps ``k >= floor(k/2)``, so after 10 iterations ``k >= 2^6``:
   k never reaches 0 and ``var = 0`` rows (all-equal rows) need no guard; they give ``y = 0``.
   *Convergence* (checked exhaustively below 2^22 and on ranges up to 2^51): for
   34596 <= var < 2^46 the result is isqrt(var), or isqrt(var)+1 where floor-Newton oscillates
   (var = m² - 1 type values), and exactly isqrt on perfect squares. Below ~2^15 it is still
   halving down from 2^16 (k >= 64), so a row with a small integer variance comes out too small;
   the pass keeps rows in range by quantizing the input to 16 bits by default (an int8 input with
   d = 384 needs an integer std >= ~9.5). Above 2^46 (int16 rows wider than ~16k) it has not
   converged either.
4. ``f = floor((2^31 - 1) / k)``, ``n = floor(y·f / 2)``: ``y / std`` in units of ``√d / 2^30``;
   ``|n| < 2^30`` because ``|y| <= isqrt(var) <= k``.
5. Affine with an integer multiplier (not I-ViT's β/γ fold, which divides by γ: a real MiniLM
   LayerNorm has γ = 5e-33 with β/γ = 57, past int32 once scaled by 2^30/√d):
   ``Y = floor(n·Mult / 2^shift) + Bias``. ``n·Mult`` is int64 (``|Mult| <= 2^15`` from the pass:
   < 2^45). The pass chooses Mult, Bias, shift so that Y fits in int32 with a per-tensor output
   scale ``s_out``: ``Mult_c / 2^shift ≈ γ_c·(√d/2^30) / s_out`` and ``Bias_c = round(β_c / s_out)``.

Floor division of values that can be negative uses ``Div(Sub(a, Mod(a, b)), b)`` (``Mod`` with
``fmod=0`` has the divisor's sign, b > 0); divisions of non-negative values (the Newton steps, f)
use ``Div`` directly, which truncates = floors there. The body uses integer tensor types only.
"""

from __future__ import annotations

import numpy as np

from graphopt import ops

__all__ = ["INT_LAYER_NORM", "NEWTON_ITERATIONS", "NEWTON_START", "int_layer_norm", "int_sqrt"]

NEWTON_START = 1 << 16
NEWTON_ITERATIONS = 10
F_NUMERATOR = (1 << 31) - 1


def int_sqrt(var: np.ndarray) -> np.ndarray:
    """I-ViT's integer square root of non-negative int64 ``var``: 10 Newton steps from 2^16."""
    var = np.asarray(var, dtype=np.int64)
    k = np.full_like(var, NEWTON_START)
    for _ in range(NEWTON_ITERATIONS):
        k = (k + var // k) // 2
    return k


def normalize(x: np.ndarray, center: int = 1) -> np.ndarray:
    """Steps 1-4: ``(x - mean) / std`` (``center=0``: ``x / rms``) over the last axis in units of √d/2^30, int64."""
    x = np.asarray(x).astype(np.int64)
    d = x.shape[-1]
    if int(center):
        total = x.sum(axis=-1, keepdims=True)
        y = x - (2 * total + d) // (2 * d)
    else:
        y = x
    var = (y * y).sum(axis=-1, keepdims=True)
    k = int_sqrt(var)
    f = F_NUMERATOR // k
    return (y * f) // 2


def int_layer_norm(x: np.ndarray, mult: np.ndarray, bias: np.ndarray, shift: int = 16, center: int = 1) -> np.ndarray:
    """The spec: I-ViT IntLayerNorm of int32 ``x`` over the last axis (``center=0``: RMSNorm), integer affine, int32 out."""
    n = normalize(x, center)
    out = (n * np.asarray(mult).astype(np.int64)) // (np.int64(1) << np.int64(shift)) + np.asarray(bias).astype(np.int64)
    return out.astype(np.int32)


def _body() -> str:
    newton = []
    for i in range(NEWTON_ITERATIONS):
        newton.append(f"   Q{i} = Div(Var, K{i})\n   T{i} = Add(K{i}, Q{i})\n   K{i + 1} = Div(T{i}, Two)")
    steps = "\n".join(newton)
    return f"""<domain: "pkg.graphopt", opset_import: ["" : 18]>
IntLayerNorm <shift: int = 16, center: int = 1> (X, Mult, Bias) => (Y) {{
   X64 = Cast <to = 7> (X)
   Axes = Constant <value = int64[1] {{-1}}> ()
   Two = Constant <value = int64 {{2}}> ()
   D = Shape <start = -1> (X64)
   Total = ReduceSum <keepdims = 1> (X64, Axes)
   Total2 = Mul(Total, Two)
   MeanNum = Add(Total2, D)
   MeanDen = Mul(D, Two)
   MeanRem = Mod(MeanNum, MeanDen)
   MeanExact = Sub(MeanNum, MeanRem)
   MeanFull = Div(MeanExact, MeanDen)
   One = Constant <value = int64 {{1}}> ()
   CenterAttr = Constant <value_int: int = @center> ()
   CenterAbs = Abs(CenterAttr)
   CenterFlag = Min(CenterAbs, One)
   Mean = Mul(MeanFull, CenterFlag)
   Yc = Sub(X64, Mean)
   Sq = Mul(Yc, Yc)
   Var = ReduceSum <keepdims = 1> (Sq, Axes)
   K0 = Constant <value = int64 {{{NEWTON_START}}}> ()
{steps}
   FNum = Constant <value = int64 {{{F_NUMERATOR}}}> ()
   F = Div(FNum, K{NEWTON_ITERATIONS})
   P = Mul(Yc, F)
   PRem = Mod(P, Two)
   PExact = Sub(P, PRem)
   N = Div(PExact, Two)
   Mult64 = Cast <to = 7> (Mult)
   Scaled = Mul(N, Mult64)
   Shift = Constant <value_int: int = @shift> ()
   Pow2 = Pow(Two, Shift)
   Den = Cast <to = 7> (Pow2)
   SRem = Mod(Scaled, Den)
   SExact = Sub(Scaled, SRem)
   Affine = Div(SExact, Den)
   Bias64 = Cast <to = 7> (Bias)
   Out = Add(Affine, Bias64)
   Y = Cast <to = 6> (Out)
}}"""


def _examples():
    rng = np.random.default_rng(20250621)
    i32 = np.int32

    def affine(d, scale=1 << 14, bias=1 << 20):
        return rng.integers(-scale, scale + 1, d).astype(i32), rng.integers(-bias, bias + 1, d).astype(i32)

    cases = []
    x = rng.integers(-127, 128, (2, 5, 16)).astype(i32)
    cases.append(((x, *affine(16)), {"shift": 16}))
    x = rng.integers(-32767, 32768, (3, 384)).astype(i32)  # int16 residual stream, MiniLM width
    cases.append(((x, *affine(384)), {"shift": 17}))
    equal = np.array([[5] * 8, [-127] * 8, [0] * 8, [127] * 8], dtype=i32)  # var = 0 rows
    cases.append(((equal, *affine(8)), {"shift": 16}))
    extremes = np.array([[127, -127] * 4, [127] * 7 + [-127], [-127] * 7 + [127], [-128, 127] * 4], dtype=i32)
    cases.append(((extremes, *affine(8)), {"shift": 15}))
    int16_ext = np.array([[32767, -32768] * 192, [32767] * 383 + [-32768]], dtype=i32)
    cases.append(((int16_ext, *affine(384)), {"shift": 20}))
    one = rng.integers(-127, 128, (4, 1)).astype(i32)  # d = 1: y = 0 everywhere
    cases.append(((one, *affine(1)), {"shift": 16}))
    big = rng.integers(-32767, 32768, (2, 4096)).astype(i32)  # large d
    cases.append(((big, *affine(4096)), {"shift": 16}))
    small = rng.integers(-2, 3, (3, 7)).astype(i32)  # tiny variance: Newton not converged, still the spec
    neg = np.array([-(1 << 15), 1 << 15, -1, 0, 7, -7, 1 << 14], dtype=i32), np.array([-5, 5, 0, -(1 << 29), 1 << 29, 3, -3], dtype=i32)
    cases.append(((small, *neg), {"shift": 0}))
    cases.append(((small, *neg), {"shift": 30}))
    # center=0: RMSNorm (no mean). Offset rows (mean far from 0), all-zero rows, extremes, int16 width.
    offset = (rng.integers(-127, 128, (2, 5, 16)) + 60).astype(i32)
    cases.append(((offset, *affine(16)), {"shift": 16, "center": 0}))
    cases.append(((x, *affine(384)), {"shift": 17, "center": 0}))
    cases.append(((equal, *affine(8)), {"shift": 16, "center": 0}))  # includes an all-zero row: y = 0
    cases.append(((extremes, *affine(8)), {"shift": 15, "center": 0}))
    cases.append(((int16_ext, *affine(384)), {"shift": 20, "center": 0}))
    cases.append(((one, *affine(1)), {"shift": 16, "center": 0}))  # d = 1: n = sign(x)·2^30-ish
    cases.append(((small, *neg), {"shift": 0, "center": 0}))
    return cases


INT_LAYER_NORM = ops.declare_op(
    ops.OpDef(
        name="IntLayerNorm",
        doc=(
            "I-ViT integer LayerNorm over the last axis of int32 X: integer mean, var = Σ(x-mean)², "
            "10-step Newton isqrt from 2^16, n = floor((x-mean)·floor((2^31-1)/k)/2) (scale √d/2^30), "
            "then Y = floor(n·Mult / 2^shift) + Bias (int64 inside, int32 out). center=0 skips the mean: integer RMSNorm."
        ),
        reference=int_layer_norm,
        body=_body(),
        examples=_examples,
    )
)
