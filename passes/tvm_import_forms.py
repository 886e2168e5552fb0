"""Rewrite the ONNX forms TVM's ONNX frontend misreads into equivalent forms it reads right.

    Resize(x, roi, scales=[], sizes)        ->  Resize(x, roi, , sizes)
    Constant(value_ints=[2, 3])              ->  Constant(value=tensor([2, 3]))   (and value_int(s)/value_float(s))
    MatMul/Gemm/Conv/ConvTranspose(a: f16, b: f16, ...)
                                            ->  Cast(Op(Cast(a, f32), Cast(b, f32), ...), f16)

Each output is the same as before on ONNX Runtime (the float16 one up to ONNX Runtime's own
rounding, which is once, at the end, as here).

Not applied (declined, with the reason) when ``scales`` is not an empty constant, when the
Constant already holds a tensor, or when a contraction is not float16/bfloat16.

Why: opset 11-12 exporters fill Resize's unused ``scales`` with an empty constant, which TVM's
converter takes for given scales and refuses next to ``sizes``; the converter reads only a
Constant's ``value`` ("no value in Constant"; folding writes a graph output's Shape as
``value_ints``); and its Conv/MatMul accumulate float16 in float16 (K=512 dot products measured
7 ulp, ~0.01 absolute, off where ONNX Runtime is 0.5 ulp). Run last in the TVM backend's
preparation; harmless in any pipeline.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from graphopt.pass_base import RulePass
from graphopt.registry import register_pass

__all__ = ["TvmImportFormsPass"]

HALF_PRECISION = (ir.DataType.FLOAT16, ir.DataType.BFLOAT16)
CONTRACTIONS = ("MatMul", "Gemm", "Conv", "ConvTranspose")
CONSTANT_LISTS = {"value_int": np.int64, "value_ints": np.int64, "value_float": np.float32, "value_floats": np.float32}


class _EmptyResizeScales(pattern.RewriteRuleClassBase):
    def pattern(self, op, x, roi, scales, sizes):
        return op.Resize(x, roi, scales, sizes, _outputs=["resized"])

    def check(self, context, scales, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if scales.const_value is None or scales.const_value.size != 0:
            return result.fail("scales is not an empty constant")
        return result

    def rewrite(self, op, x, roi, sizes, resized, **_):
        return op.Resize(x, roi, None, sizes, **resized.producer().attributes)


class _ConstantListAsTensor(pattern.RewriteRuleClassBase):
    def pattern(self, op):
        return op.Constant(_outputs=["constant"])

    def check(self, context, constant, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        attributes = constant.producer().attributes
        listed = [attributes[name] for name in CONSTANT_LISTS if name in attributes]
        if not listed:
            return result.fail("the Constant holds a tensor already")
        if listed[0].is_ref():
            return result.fail("the value is a function attribute, known only at the call")
        return result

    def rewrite(self, op, constant, **_):
        attributes = constant.producer().attributes
        name = next(name for name in CONSTANT_LISTS if name in attributes)
        array = np.asarray(attributes[name].value, dtype=CONSTANT_LISTS[name])
        return op.Constant(value=ir.tensor(array, name=constant.name))


class _WidenHalfContraction(pattern.RewriteRuleClassBase):
    def __init__(self, op_type: str) -> None:
        super().__init__(f"widen-half-{op_type.lower()}")
        self.op_type = op_type

    def pattern(self, op, a):
        return getattr(op, self.op_type)(a, _allow_other_inputs=True, _outputs=["product"])

    def check(self, context, a, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if a.dtype not in HALF_PRECISION:
            return result.fail(f"{self.op_type} input is {a.dtype}, not float16/bfloat16")
        return result

    def rewrite(self, op, a, product, **_):
        node = product.producer()
        wide = [op.Cast(v, to=ir.DataType.FLOAT) if v is not None else None for v in node.inputs]
        return op.Cast(getattr(op, self.op_type)(*wide, **node.attributes), to=a.dtype)


@register_pass("tvm-import-forms", category="backend")
class TvmImportFormsPass(RulePass):
    """Rewrite empty Resize scales, list-valued Constants and float16 contractions into forms TVM imports right."""

    def rules(self):
        return [
            _EmptyResizeScales.rule("resize-drop-empty-scales"),
            _ConstantListAsTensor.rule("constant-list-as-tensor"),
            *(_WidenHalfContraction.rule(op_type) for op_type in CONTRACTIONS),
        ]
