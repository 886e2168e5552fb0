"""``pkg.graphopt::ShiftGelu`` with ``row_max=0`` as a lookup table: ``Y = x · σ[clip(x, -L, L)]``.

With ``row_max=0`` each element's σ depends on that element alone (``m = max(x, 0)``), and only
through ``ShiftExp(-|x|)``, whose exponent is clamped to ``n·x0`` once ``|x| >= L``: ``g(t) = t +
(t>>1) - (t>>4)`` is non-decreasing, so for ``t <= -L`` (L the smallest with ``g(-L) <= n·x0``)
``max(g(t), n·x0) = n·x0``. σ is therefore constant for ``x <= -L`` and for ``x >= L``, and a
table of σ on ``[-L, L]`` (computed at compile time with the op's own int64 numpy steps, and
checked against the reference there) gives the spec bit for bit: the per-element work is a clamp,
one table load and one multiply, instead of two ShiftExps and an integer division (which AVX2
cannot vectorize). σ is stored in the narrowest integer type that holds it (int8 for
``out_bits=8``). Tables are used up to ``MAX_ENTRIES`` entries (MiniLM ivit: x0=-768, n=8 -> 8,549
entries, 8.5 KB; ViT-S/16 224: x0≈-10,000, n=8 -> ~114,000 entries, 114 KB, where the lookup took
0.40 ms against 0.70 ms for the arithmetic kernel on [197, 1536], Zen 4, 2 threads, best of 60
interleaved; an int32 table 0.54 ms); larger ones fall back to the arithmetic kernel in ``shiftgelu.py``.
"""

from __future__ import annotations

import functools

import numpy as np
from tvm import relax, te, tirx

from graphopt import ops
from graphopt.ops.shift_gelu import shift_exp

from ._common import INT31, i64, to_i64

MAX_ENTRIES = 1 << 18
INJECTIVE = 2  # relax's OpPatternKind::kInjective


def table_limit(x0: int, n: int) -> int | None:
    """L (see the module docstring), or None when the table would exceed ``MAX_ENTRIES``."""
    span = n * -x0 + 2  # g(-t) <= -t for t >= 2, so g(-(n·|x0| + 2)) < n·x0: L is below this
    if x0 > -1 or n < 0 or 2 * span + 1 > MAX_ENTRIES:
        return None
    t = -np.arange(span + 1, dtype=np.int64)
    g = t + (t >> 1) - (t >> 4)
    return int(np.argmax(g <= n * x0))


@functools.lru_cache(maxsize=64)
def sigma_table(x0: int, n: int, out_bits: int) -> tuple[int, np.ndarray] | None:
    """(L, σ for x = -L..L as int32), or None when no table is used."""
    limit = table_limit(x0, n)
    if limit is None or not 1 <= out_bits <= 32:
        return None
    x = np.arange(-limit, limit + 1, dtype=np.int64)
    m = np.maximum(x, 0)
    e_d, e_m = shift_exp(x - m, x0, n), shift_exp(-m, x0, n)  # the spec's steps 1-3, in int64
    f = np.floor_divide(np.int64(INT31), np.minimum(e_d + e_m, INT31))
    sigma = np.floor_divide(e_d * f, np.int64(2) ** (32 - out_bits))
    reference = ops.get_op("ShiftGelu").reference(x.astype(np.int32), x0=x0, n=n, out_bits=out_bits, row_max=0)
    if not np.array_equal((x * sigma).astype(np.int32), reference):  # the table must reproduce the spec
        raise AssertionError(f"ShiftGelu table disagrees with the reference for x0={x0}, n={n}")
    # σ < 2^(out_bits-1): int8 for ivit's out_bits=8, so the table stays in L2 (ViT-S: 114 KB)
    dtype = next(t for t in (np.int8, np.int16, np.int32) if sigma.min() >= np.iinfo(t).min and sigma.max() <= np.iinfo(t).max)
    return limit, sigma.astype(dtype)


def shift_gelu_lookup(x: te.Tensor, table: te.Tensor, limit: int) -> te.Tensor:
    """``x · table[clip(x, -limit, limit) + limit]``, the product wrapped to int32 as the spec's ``astype``."""

    def gelu(*index):
        value = x(*index)
        # int64 index math: TVM's simplifier may move ``+ limit`` inside the clamp, where int32 would overflow
        position = tirx.min(tirx.max(to_i64(value), i64(-limit)), i64(limit)) + i64(limit)
        return (to_i64(value) * to_i64(table(position))).astype("int32")  # LLVM narrows this to a 32-bit multiply

    return te.compute(x.shape, gelu, name="shiftgelu")


def convert_with_table(bb: relax.BlockBuilder, x: relax.Expr, attrs: dict) -> relax.Expr | None:
    """The table kernel for a ShiftGelu with these (defaults-merged) attributes, or None when it does not apply."""
    if int(attrs["row_max"]) or str(x.ty.dtype) != "int32":
        return None
    found = sigma_table(int(attrs["x0"]), int(attrs["n"]), int(attrs["out_bits"]))
    if found is None:
        return None
    limit, table = found
    out = bb.emit_te(shift_gelu_lookup, x, relax.const(table), limit=limit, primfunc_name_hint="graphopt_shiftgelu")
    # TVM's pattern analysis calls a data-dependent load opaque, which would keep the kernel out of the
    # fused elementwise chain around it (requant -> ShiftGelu -> requant); it is injective in x.
    gvar = bb.lookup_binding(out).args[0]
    bb.update_func(gvar, bb.get()[gvar].with_attr("op_pattern", INJECTIVE))
    return out
