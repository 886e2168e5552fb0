"""Cleanup rule: a zero Pad of the spatial axes in front of a Conv becomes the Conv's own padding.

    Conv(Pad(x, pads, 0, mode=constant), W, B?)  ->  Conv(x, W, B?, pads=conv pads + spatial pads)

Exporters of TensorFlow-style "same" padding (Hugging Face MobileNetV2, EfficientNet ports) write
the Pad as its own node; ONNX Runtime fuses it back (its PadFusion), and a backend that keeps it
pays a full copy of the activation per conv (TVM: and a layout transform around it). Exact: the
Conv reads the same zeros either way.

Declined (with the reason) when the Pad is not constant zero padding, pads the batch or channel
axes or pads negatively (a crop), when its pads are not constants, or when the Conv uses auto_pad.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from graphopt.passes._canonical_utils import constant

__all__ = ["pad_into_conv_rule"]


def _attr(node: ir.Node, name: str, default):
    attribute = node.attributes.get(name)
    return attribute.value if attribute is not None else default


class _PadIntoConv(pattern.RewriteRuleClassBase):
    def pattern(self, op, x, pads):
        padded = op.Pad(x, pads, _allow_other_inputs=True, _outputs=["padded"])
        return op.Conv(padded, _allow_other_inputs=True, _outputs=["conv"])

    def check(self, context, x, pads, padded, conv, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        pad_node, conv_node = padded.producer(), conv.producer()
        if conv_node.inputs[0] is not padded:
            return result.fail("the Pad feeds the Conv's weights, not its input", conv_node)
        if _attr(pad_node, "mode", "constant") != "constant":
            return result.fail("the Pad is not constant padding (reflect/edge/wrap)", pad_node)
        extra = list(pad_node.inputs[2:])
        value = extra[0] if extra else None
        if value is not None and (constant(value) is None or np.any(constant(value) != 0)):
            return result.fail("the Pad's value is not a constant zero", pad_node)
        if len(extra) > 1 and extra[1] is not None:
            return result.fail("the Pad names its axes (opset 18 form): not folded", pad_node)
        widths = constant(pads)
        rank = len(widths) // 2 if widths is not None else 0
        if widths is None or rank < 3:
            return result.fail("the Pad's pads are not a constant of the input's rank", pad_node)
        if np.any(widths[[0, 1, rank, rank + 1]] != 0) or np.any(widths < 0):
            return result.fail("the Pad pads the batch or channel axis, or crops", pad_node)
        if _attr(conv_node, "auto_pad", "NOTSET") != "NOTSET":
            return result.fail("the Conv uses auto_pad", conv_node)
        return result

    def rewrite(self, op, x, pads, padded, conv, **_):
        conv_node = conv.producer()
        widths = constant(pads).astype(int).tolist()
        spatial = len(widths) // 2 - 2
        own = list(_attr(conv_node, "pads", [0] * (2 * spatial)))
        merged = [own[i] + widths[2 + i] for i in range(spatial)] + [own[spatial + i] + widths[len(widths) // 2 + 2 + i] for i in range(spatial)]
        attributes = {name: attr.value for name, attr in conv_node.attributes.items() if name != "pads"}
        return op.Conv(x, *conv_node.inputs[1:], pads=merged, **attributes)


pad_into_conv_rule = _PadIntoConv.rule(name="pad-into-conv")
