"""Fold every value that follows from constants and static shapes into an initializer.

    Shape(x) with x of static shape                     ==>  an int64 constant
    Op(c1, c2, ...) with every input constant (Range, Where, Expand, Resize of a position
    embedding, Concat/Gather shape arithmetic, ...)      ==>  its value, evaluated once

Exporters compute masks, position ids and interpolated position embeddings from ``Shape`` with long
chains (Range, Where, Expand, vmap-style Gather/And arithmetic in the legacy MiniLM export, a ViT's
bicubic Resize of its position embedding for the input size). Shape inference and onnxscript's
folding lose track in such chains; once input shapes are static (``--input-shape``, or a
dynamo export) they are plain numbers: each node is evaluated with ONNX's reference evaluator, in
graph order, and its results (up to ``limit`` elements each; weights themselves are never
re-evaluated) replace its outputs. With dynamic input shapes the shape chains stay (nothing is
static), so the pass is safe in any pipeline.

Not folded: ops with state or randomness (``SKIP``), control flow, custom domains, values above
``limit`` elements, ops the reference evaluator cannot run.

Why: the integer-only passes need these values constant (a float Resize of the position embedding
left inside the integer region is a float op there), and TVM's frontend cannot broadcast symbolic
shapes. Used by the ``ivit`` preset and by the TVM importer.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnx_ir as ir
from onnx.reference import ReferenceEvaluator

from graphopt.pass_base import GraphoptPass
from graphopt.registry import register_pass

__all__ = ["FoldStaticValuesPass", "FoldStaticValuesOptions", "fold_static_values"]

STANDARD_DOMAINS = ("", "ai.onnx")
# never evaluate ops with state or randomness
SKIP = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli", "If", "Loop", "Scan"}


def _static(shape: ir.Shape | None) -> bool:
    return shape is not None and all(isinstance(d, int) for d in shape)


def _evaluate(node: ir.Node, inputs: list[np.ndarray | None], opset: int) -> list[np.ndarray]:
    names = [f"i{k}" if v is not None else "" for k, v in enumerate(inputs)]
    proto = onnx.helper.make_node(
        node.op_type, names, [f"o{k}" for k in range(len(node.outputs))], **{a.name: a.value for a in node.attributes.values() if a.type != ir.AttributeType.GRAPH}
    )
    for attr in node.attributes.values():  # tensors need their proto form
        if attr.type == ir.AttributeType.TENSOR:
            proto.attribute.remove(next(a for a in proto.attribute if a.name == attr.name))
            proto.attribute.append(onnx.helper.make_attribute(attr.name, ir.serde.serialize_tensor(attr.value)))
    graph = onnx.helper.make_graph(
        [proto],
        "fold",
        [onnx.helper.make_tensor_value_info(n, onnx.helper.np_dtype_to_tensor_dtype(v.dtype), v.shape) for n, v in zip(names, inputs) if n],
        [onnx.helper.make_tensor_value_info(f"o{k}", onnx.TensorProto.UNDEFINED, None) for k in range(len(node.outputs))],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    feeds = {n: v for n, v in zip(names, inputs) if n}
    return ReferenceEvaluator(model).run(None, feeds)


def fold_static_values(model: ir.Model, limit: int = 1 << 16) -> bool:
    """Replace every foldable value of at most ``limit`` elements by an initializer; True if any was."""
    opset = model.opset_imports.get("", 18)
    known: dict[ir.Value, np.ndarray] = {}
    for value in model.graph.initializers.values():
        if value.const_value is not None and value.const_value.size <= limit:
            known[value] = value.const_value.numpy()
    replaced = False
    for node in list(model.graph):
        if node.domain not in STANDARD_DOMAINS or node.op_type in SKIP:
            continue
        if node.op_type in ("Shape", "Size") and _static(node.inputs[0].shape) and node.inputs[0] not in known:
            values = [np.asarray(node.inputs[0].shape.numpy() if hasattr(node.inputs[0].shape, "numpy") else list(node.inputs[0].shape), dtype=np.int64)]
            start, end = node.attributes.get_int("start", 0), node.attributes.get_int("end", None)
            values = [values[0][start:end]] if node.op_type == "Shape" else [np.asarray(int(np.prod(values[0])), dtype=np.int64)]
        elif node.inputs and all(v is None or v in known for v in node.inputs) or (not node.inputs and node.op_type == "Constant"):
            try:
                values = _evaluate(node, [known.get(v) if v is not None else None for v in node.inputs], opset)
            except Exception:  # noqa: BLE001 — an op the reference evaluator lacks is simply not folded
                continue
        else:
            continue
        if any(np.asarray(v).size > limit for v in values):
            continue
        for output, array in zip(node.outputs, values):
            known[output] = np.asarray(array)
        if node.op_type == "Constant" or all(o.const_value is not None for o in node.outputs):
            continue
        for output, array in zip(node.outputs, values):
            constant = ir.Value(name=output.name + "_static", shape=ir.Shape(list(np.shape(array))), type=ir.TensorType(ir.DataType.from_numpy(np.asarray(array).dtype)))
            constant.const_value = ir.tensor(np.asarray(array), name=constant.name)
            model.graph.register_initializer(constant)
            known[constant] = np.asarray(array)  # later nodes read the constant that replaced the output
            if output.is_graph_output():
                continue
            ir.convenience.replace_all_uses_with(output, constant)
        replaced = True
    return replaced


@dataclasses.dataclass(frozen=True)
class FoldStaticValuesOptions:
    limit: int = 1 << 16  # largest value (elements) folded into an initializer


@register_pass("fold-static-values", options=FoldStaticValuesOptions, category="cleanup")
class FoldStaticValuesPass(GraphoptPass):
    """Evaluate values that follow from constants and static shapes (shape chains, Resize of constants) once."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        return ir.passes.PassResult(model, modified=fold_static_values(model, self.options.limit))

