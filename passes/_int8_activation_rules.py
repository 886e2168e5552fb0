"""The activation rule of ``int8-linear``: MatMul of two activations (attention's Q·Kᵀ and P·V).

    MatMul(X, Y)  ->  DequantizeLinear(MatMulInteger(QuantizeLinear(X, s_x, int8 0),
                                                     QuantizeLinear(Y, s_y, int8 0)), s_x·s_y, int32 0)

A never-negative operand that only activation MatMuls read (softmax probabilities) is uint8 with
scale max/255; the other operand then goes in as uint8 with zero point 128. See
``passes/int8_linear.py`` and ``docs/int8-linear.md``.
"""

from __future__ import annotations

import numpy as np
from onnxscript.rewriter import pattern

from graphopt.passes._int8_maths import UQMAX
from graphopt.passes._int8_weight_rules import Int8Rule, Island, Plan, is_constant, static_dim

__all__ = ["MatMulActivations"]


class MatMulActivations(Int8Rule):
    """MatMul(X, Y) of two activations: both per-tensor int8, scalar output scale."""

    def pattern(self, op, x, y):
        return op.MatMul(x, y)

    def check(self, context, x, y, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        self._plan = None
        node = context.root
        if is_constant(y) or is_constant(x):
            which = "B" if is_constant(y) else "A"
            return result.fail(f"MatMul's {which} is a constant: a weight, the int8-matmul rule's case", node)
        s_x = self._activation(result, x, "MatMul's A")
        if s_x is None:
            return result
        s_y = self._activation(result, y, "MatMul's B")
        if s_y is None:
            return result
        if not self._common(context, result, per_axis=False):
            return result
        k = static_dim(x, -1)
        widest = max((UQMAX if v.name in self.calibrated.unsigned else 128) for v in (x, y))
        if not self._accumulation(result, k, widest * 128, 0):
            return result
        s_out = np.array(np.float64(np.float32(s_x)) * np.float64(np.float32(s_y)), np.float32)
        self._plan = Plan(node.graph, f"int8_linear_{node.name or x.name}", s_x, s_y=s_y, s_out=s_out)
        return result

    def rewrite(self, op, x, y, **_):
        plan = self._plan
        island = Island(op, plan, self.calibrated.unsigned)
        unsigned = [v.name in self.calibrated.unsigned for v in (x, y)]
        if unsigned[0] != unsigned[1]:
            # ONNX Runtime's uint8 x int8 kernel on AVX2 without VNNI sums product pairs in saturating
            # int16 (vpmaddubsw): 255·127·2 > 32767, so its result would not be the exact product.
            # The signed operand goes in as uint8 with zero point 128 (the same int8 values, shifted):
            # uint8 x uint8 is exact there, in TVM and in the reference.
            zero = island.shared("graphopt_int8_linear_zero_uint8_128", np.array(128, np.uint8))

            def shifted(v, scale, suffix):
                return op.QuantizeLinear(v, island.init(suffix, np.asarray(scale, np.float32)), zero)

            xq = island.quantize(x, plan.s_x, "s_a") if unsigned[0] else shifted(x, plan.s_x, "s_a")
            yq = shifted(y, plan.s_y, "s_b") if unsigned[0] else island.quantize(y, plan.s_y, "s_b")
            zeros = [None, zero] if unsigned[0] else [zero]
            return island.dequantize(op.MatMulInteger(xq, yq, *zeros), plan.s_out, -1)
        xq = island.quantize(x, plan.s_x, "s_a")
        yq = island.quantize(y, plan.s_y, "s_b")
        return island.dequantize(op.MatMulInteger(xq, yq), plan.s_out, -1)
