"""Key-padding masks of attention blocks rewritten into linear form (``linear-attention``,
``binary-attention``): which masks such a rewrite can honour, and how.

A linear form weighs keys (``Kf_j · exp(mask_j)``), never (query, key) pairs, so the mask must be the
same for every query: a key-padding mask. ``query_independent`` proves it from the graph (a constant
with equal rows, a query axis of 1, or elementwise ops of such values, transformers' ``q_idx >= 0``
half included); ``key_mask`` classifies a DotProductAttention's mask or says why it declines.
"""

from __future__ import annotations

import onnx_ir as ir

from graphopt.passes._canonical_utils import constant

__all__ = ["MASK_LIMIT", "key_mask", "query_independent", "rank"]

MASK_LIMIT = 1 << 22  # largest constant mask (elements) read to check its rows

# elementwise ops through which a mask stays the same for every query if its inputs are
_ELEMENTWISE = frozenset({"Add", "Sub", "Mul", "Div", "Where", "And", "Or", "Xor", "Not", "Cast", "CastLike", "Neg",
                          "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Min", "Max", "Identity",
                          "Clip", "Abs", "Log", "Exp"})


def rank(value: ir.Value | None) -> int | None:
    return None if value is None or value.shape is None else len(value.shape)


def _is(node: ir.Node | None, op_type: str) -> bool:
    return node is not None and node.domain in ("", "ai.onnx") and node.op_type == op_type


def _scalar(value: ir.Value | None) -> float | None:
    array = constant(value)
    return float(array.reshape(())) if array is not None and array.size == 1 else None


def _always_true(value: ir.Value) -> bool:
    """``Range(start, n, step > 0) >= c`` with start >= c (behind Unsqueezes): the query half of
    transformers' padding mask (``q_idx >= 0``), true everywhere whatever the length."""
    node = value.producer()
    if not (_is(node, "GreaterOrEqual") or _is(node, "LessOrEqual")):
        return False
    ranged, bound = node.inputs if node.op_type == "GreaterOrEqual" else reversed(node.inputs)
    source = ranged.producer()
    while _is(source, "Unsqueeze"):
        source = source.inputs[0].producer()
    if not _is(source, "Range") or (c := _scalar(bound)) is None:
        return False
    start, step = _scalar(source.inputs[0]), _scalar(source.inputs[2])
    return start is not None and step is not None and step > 0 and start >= c


def query_independent(value: ir.Value | None, depth: int = 0) -> bool:
    """Whether ``value`` (an additive mask, broadcast to [.., Sq, Sk]) is equal along its query axis:
    its static query axis is 1 (or it has none), it is a constant with equal rows or always true
    (``_always_true``), or it is made by elementwise ops (Expand: its data) of such values."""
    if value is None:
        return True
    shape = value.shape
    if shape is not None and (len(shape) < 2 or shape[-2] == 1):
        return True
    if (array := constant(value, max_size=MASK_LIMIT)) is not None:
        return array.ndim < 2 or bool((array == array[..., :1, :]).all())
    node = value.producer()
    if node is None or node.domain not in ("", "ai.onnx") or depth > 12:
        return False
    if node.op_type == "ConstantOfShape" or _always_true(value):
        return True
    if node.op_type == "Expand":
        return query_independent(node.inputs[0], depth + 1)
    if node.op_type in _ELEMENTWISE:
        data = node.inputs[:1] if node.op_type == "Clip" else node.inputs
        return all(query_independent(x, depth + 1) for x in data)
    return False


def key_mask(mask: ir.Value | None, method: str) -> tuple[str, int, str | None]:
    """``(kind, rank, why not)`` of a DotProductAttention's additive mask for ``method`` (named in the
    reason): kind "none" (absent, all zero, or a scalar, which cancels), "rank1" (one weight per
    key) or "rows" (a query-independent [.., Sq, Sk] mask: its first row is taken)."""
    mask_rank = rank(mask) or 0
    array = constant(mask, max_size=MASK_LIMIT)
    if mask is None or (array is not None and not array.any()):
        return "none", mask_rank, None
    if rank(mask) is None:
        return "none", 0, f"the rank of the mask {mask.name} is unknown"
    if not query_independent(mask):
        return "none", mask_rank, (f"the mask {mask.name} may differ between queries (not a key-padding mask): "
                                   f"{method} can weigh keys, not (query, key) pairs")
    return ("rank1" if mask_rank == 1 else "rows" if mask_rank >= 2 else "none"), mask_rank, None
