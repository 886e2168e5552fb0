"""Compute the ops that become integer islands in float32 on a float16 model (``ivit`` on fp16 models).

    Op(x: float16, W: float16 constant, ...)  ->  Cast<float16>(Op(Cast<float>(x), W as float32, ...))

for ``Op`` in MatMul, Gemm, Conv, Gelu, LayerNormalization, RMSNormalization, graphopt's
SigmoidLinearUnit, and Mul of two computed values: the ops ``int8-linear``, ``shiftgelu``,
``ilayernorm``, ``irmsnorm``, ``shiftsilu`` and ``imul`` take, whose islands read float32 (their
output scales, ~1e-8·γ for I-LayerNorm, underflow float16). A float16 constant input becomes a
float32 constant (the same numbers: float16 widens exactly), a computed one gets a Cast. Softmax
is left as it is (``shiftmax`` takes float16). Everything else stays float16: ``integer-chain``
lowers the float16 ops between the islands (Add, layout ops, Casts between float types) like
float32 ones, so the region ends up integer-only all the same.

Not applied (declined, with the reason) to a Mul by a constant (``integer-chain`` folds a constant
factor into its requant; there is no island to feed). A node with no float16 input has nothing to
widen: its check fails (onnxscript's one way to leave a match alone) but that is no decline, so the
pass leaves those out of its declines; they include the float32 nodes it made itself, which the
driver's explaining traversal matches again. On a model without a float16 value the pass does not
run its rules at all. A node whose other outputs are read (LayerNormalization's Mean) does not
match: the rewrite replaces only the output it names.

Numerics: the op computes in float32 what it computed in float16 and its output is rounded to
float16 once: within float16 rounding of the original, usually closer to the float32 model.

Why: the float16 forms of the zoo (``bert-fp16``, ``vit-fp16``: ONNX Runtime's float16
converter) otherwise keep every MatMul, norm and GELU float under ``ivit``.
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import pattern

from graphopt import ops
from graphopt.pass_base import RulePass
from graphopt.passes._canonical_utils import constant
from graphopt.registry import register_pass

__all__ = ["Float32IslandsPass"]

# (op type, domain): the float ops an integer island replaces; Softmax is not here (shiftmax takes float16)
ISLAND_OPS = (("MatMul", ""), ("Gemm", ""), ("Conv", ""), ("Gelu", ""), ("LayerNormalization", ""),
              ("RMSNormalization", ""), ("SigmoidLinearUnit", ops.DOMAIN), ("Mul", ""))
_HALF = ir.DataType.FLOAT16
NOTHING_TO_WIDEN = "no float16 input: nothing to widen"  # not a decline (see the module docstring)


def _is_constant(value: ir.Value) -> bool:
    return constant(value, max_size=1 << 30) is not None


def _widened(op, value: ir.Value | None):
    """``value`` as float32: a float16 constant as a float32 Constant, a computed one through a Cast."""
    if value is None or value.dtype != _HALF:
        return value
    array = constant(value, max_size=1 << 30)
    if array is not None:
        return op.Constant(value=ir.tensor(array.astype("float32")))
    return op.Cast(value, to=ir.DataType.FLOAT)


class _Widen(pattern.RewriteRuleClassBase):
    """A float16 ``op_type`` node -> the same node on float32 inputs, its output cast back to float16."""

    def __init__(self, name: str, op_type: str, domain: str) -> None:
        super().__init__(name)
        self.op_type, self.domain = op_type, domain

    def pattern(self, op, x):
        return getattr(op, self.op_type)(x, _domain=self.domain, _allow_other_inputs=True,
                                         _allow_other_attributes=True, _outputs=["y"])

    def check(self, context, x, y, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        node = y.producer()
        if not any(v is not None and v.dtype == _HALF for v in node.inputs):
            return result.fail(NOTHING_TO_WIDEN, node)
        if self.op_type == "Mul" and any(_is_constant(v) for v in node.inputs):
            return result.fail("a Mul by a constant: integer-chain folds the factor, no island to feed", node)
        return result

    def rewrite(self, op, x, y, **_):
        node = y.producer()
        inputs = [_widened(op, v) for v in node.inputs]
        while inputs and inputs[-1] is None:
            inputs.pop()
        version = {"_version": ops.OPSET_VERSION} if self.domain == ops.DOMAIN else {}
        wide = getattr(op, self.op_type)(*inputs, _domain=self.domain, **version, **node.attributes)
        return op.Cast(wide, to=_HALF)


@register_pass("float32-islands", category="rewrite")
class Float32IslandsPass(RulePass):
    """On float16 models: the ops integer islands replace compute in float32 between Casts."""

    def rules(self):
        return [_Widen.rule(f"float32-{op_type.lower()}", op_type, domain) for op_type, domain in ISLAND_OPS]

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        if not any(v.dtype == _HALF for node in model.graph for v in node.outputs):
            return ir.passes.PassResult(model, modified=False)  # nothing to widen: no float16 value
        result = super().call(model)
        self.declines = [d for d in self.declines if d.reason != NOTHING_TO_WIDEN]
        return result
