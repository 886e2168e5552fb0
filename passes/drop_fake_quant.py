"""Drop an activation's fake quantization (a QDQ model's Quantize -> Dequantize pair) so the integer
passes quantize it themselves.

    DequantizeLinear(QuantizeLinear(x, s, zp), s, zp)      (x a float activation, s and zp constants)
    ==>  x

ONNX Runtime's ``quantize_static`` (QDQ format) wraps activations in such pairs: float in, float
out, rounded to the int8 grid in between. ``int8-linear`` builds its own integer islands with
scales calibrated on the run's data and ``integer-chain`` joins them; a pair left in between
would be float ops inside the integer region. Weights keep their ``DequantizeLinear``: the weight
rules read those integers (``is_dequantized_constant``).

Not applied (declined, with the reason) when the two nodes' scales or zero points differ or are
not constants, when the quantized value has other readers (it is the model's integer interface),
when the pair is blocked or per-axis with different axes, or when x is a constant (a weight).

Why: QDQ models are a common form of "already quantized" model; without this, ``ivit`` on them
kept 303 float ops in the region (all-MiniLM-L6-v2 from quantize_static, per-channel MatMuls).
"""

from __future__ import annotations

import numpy as np
from onnxscript.rewriter import pattern

from graphopt.pass_base import RulePass
from graphopt.passes._canonical_utils import constant
from graphopt.registry import register_pass

__all__ = ["DropFakeQuantPass"]


def _same_constant(a, b) -> bool:
    if a is None and b is None:
        return True
    x, y = constant(a, 1 << 20), constant(b, 1 << 20)
    return x is not None and y is not None and x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y)


class _FakeQuant(pattern.RewriteRuleClassBase):
    """DequantizeLinear(QuantizeLinear(x, s, zp), s, zp) -> x."""

    def pattern(self, op, x, s_q, zp_q, s_d, zp_d):
        q = op.QuantizeLinear(x, s_q, zp_q, _allow_other_attributes=True, _outputs=["q"])
        return op.DequantizeLinear(q, s_d, zp_d, _allow_other_attributes=True)

    def check(self, context, x, q, s_q, zp_q, s_d, zp_d, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if constant(x, 1) is not None or x.const_value is not None:
            return result.fail("x is a constant (a weight): its DequantizeLinear is read by the weight rules", x)
        if not (_same_constant(s_q, s_d) and _same_constant(zp_q, zp_d)):
            return result.fail("the Quantize and Dequantize scales or zero points differ or are not constants", q)
        quantize, dequantize = q.producer(), context.root
        for name in ("axis", "block_size"):
            if quantize.attributes.get_int(name, 1 if name == "axis" else 0) != dequantize.attributes.get_int(name, 1 if name == "axis" else 0):
                return result.fail(f"the pair's {name} differs", q)
        if len(q.uses()) > 1 or q.is_graph_output():
            return result.fail("the quantized value has other readers", q)
        return result

    def rewrite(self, op, x, **_):
        return op.Identity(x)


@register_pass("drop-fake-quant", category="canonicalize")
class DropFakeQuantPass(RulePass):
    """Remove activation Quantize -> Dequantize pairs of QDQ models (weights keep theirs)."""

    def rules(self):
        return [_FakeQuant.rule("drop-fake-quant")]
