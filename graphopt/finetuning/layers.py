"""Per-layer targets: blocks a pass replaced, distilled from the value they replaced in the teacher.

A pass that swaps a block's function (``linear-attention``, ``sigmoid-``/``softplus-attention``,
``binary-attention``) stamps the node computing the block's output with the name that output had
before the pass (``graphopt.ops.linear_attention.SITE_KEY``). Where the teacher computes a value of
that name, its value is a target for the block's output: Hedgehog / LoLCATs train each attention to
match the softmax attention it replaced, not only the model's outputs. Both models get those values
as extra graph outputs (on copies): the teacher's are computed with the targets, the student's come
out of its forward; the written-back model keeps the student's own interface.
"""

from __future__ import annotations

from collections.abc import Iterable

import onnx_ir as ir

from graphopt.ops.linear_attention import SITE_KEY

__all__ = ["layer_targets", "with_outputs"]


def layer_targets(student: ir.Model, teacher: ir.Model) -> dict[str, str]:
    """Student value -> teacher value of the same block: each stamped block output (main graph)
    whose site the teacher computes, with a float type in both; graph outputs are distilled already."""
    teacher_values = {v.name: v for node in teacher.graph for v in node.outputs if v.name}
    outputs = {v.name for v in student.graph.outputs}
    pairs = {}
    for node in student.graph:
        site = node.metadata_props.get(SITE_KEY)
        out = node.outputs[0] if node.outputs else None
        target = teacher_values.get(site) if site else None
        if out is None or target is None or out.name in outputs or target.is_graph_output():
            continue
        if out.dtype is not None and out.dtype.is_floating_point() and target.dtype == out.dtype:
            pairs[out.name] = target.name
    return pairs


def with_outputs(model: ir.Model, names: Iterable[str]) -> ir.Model:
    """A copy of ``model`` with the values ``names`` also as graph outputs (after its own)."""
    names = list(names)
    if not names:
        return model
    copy = model.clone()
    values = {v.name: v for node in copy.graph for v in node.outputs}
    copy.graph.outputs.extend(values[name] for name in names)
    return copy
