"""Shape inference that only adds information: types and shapes of main-graph tensor values.

onnx_ir's ShapeInferencePass merges inferred types everywhere, subgraphs included, and there it
overwrites optional/sequence types with plain tensor types (If/Loop/SequenceMap models then fail
to load). Passes here only need tensor shapes in the main graph, so this merges exactly that:
an unknown type is filled in, an unknown or less specific shape of the same rank is replaced.
Weights are kept out of the proto handed to onnx, so big models are cheap.
"""

from __future__ import annotations

import logging

import onnx
import onnx.shape_inference
import onnx_ir as ir

from graphopt.validity import call_without_weights

__all__ = ["infer_shapes"]

logger = logging.getLogger(__name__)


def _known_dims(shape: ir.Shape | None) -> int:
    return -1 if shape is None else sum(isinstance(d, int) for d in shape)


def infer_shapes(model: ir.Model) -> bool:
    """Fill in missing tensor types/shapes of the main graph; return whether anything changed."""

    def infer(proto: onnx.ModelProto) -> onnx.ModelProto:
        return onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False, data_prop=True)

    try:
        inferred = call_without_weights(infer, model)
    except Exception as e:  # inference is best effort: a pass that needs a shape declines
        logger.debug("shape inference failed: %s", e)
        return False
    infos = {vi.name: vi.type for vi in (*inferred.graph.value_info, *inferred.graph.output)}
    changed = False
    for node in model.graph:
        for value in node.outputs:
            type_proto = infos.get(value.name)
            if type_proto is None or not type_proto.HasField("tensor_type"):
                continue
            if value.type is None:
                value.type = ir.serde.deserialize_type_proto_for_type(type_proto)
                changed = True
            if not isinstance(value.type, ir.TensorType):
                continue
            shape = ir.serde.deserialize_type_proto_for_shape(type_proto)
            if shape is not None and (value.shape is None or (len(value.shape) == len(shape) and _known_dims(shape) > _known_dims(value.shape))):
                value.shape = shape
                changed = True
    return changed
