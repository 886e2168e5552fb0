"""Structural validity of a model before any pass touches it: every error is one clear line.

onnx.checker catches most problems but speaks in multi-line protobuf dumps; the checks here
find the common ones first (undefined values, cycles, external data outside the model's
folder) and say which node and what to do.
"""

from __future__ import annotations

import os

from collections.abc import Callable
from typing import TypeVar

import networkx as nx
import onnx
import onnx_ir as ir

from graphopt.errors import ModelError

__all__ = ["call_without_weights", "check_external_data_paths", "check_graph_structure", "check_model", "check_model_proto"]

_R = TypeVar("_R")
_SMALL_TENSOR_BYTES = 1024


def check_external_data_paths(proto: onnx.ModelProto, model_dir: str) -> None:
    """Refuse external data that points outside the model's folder (path traversal)."""
    root = os.path.realpath(model_dir)
    for tensor in _all_tensors(proto.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = os.path.realpath(os.path.join(root, location))
        if os.path.isabs(location) or os.path.commonpath([root, target]) != root:
            raise ModelError(
                f"tensor '{tensor.name}' stores its data at {location!r}, outside the model's folder; "
                "refusing to read it (move the data file next to the model)"
            )
        if not os.path.exists(target):
            raise ModelError(f"tensor '{tensor.name}' needs external data file {location!r}, which is missing next to the model")


def _all_tensors(graph: onnx.GraphProto):
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _all_tensors(attr.g)
            for g in attr.graphs:
                yield from _all_tensors(g)


def check_graph_structure(graph: onnx.GraphProto, outer_scope: frozenset[str] = frozenset()) -> None:
    """Every node input is defined, and the data flow has no cycle."""
    defined = set(outer_scope) | {i.name for i in graph.input} | {t.name for t in graph.initializer}
    defined |= {t.values.name for t in graph.sparse_initializer}
    produced = {o: n for n in graph.node for o in n.output if o}
    flow = nx.DiGraph()
    for index, node in enumerate(graph.node):
        label = node.name or f"#{index} {node.op_type}"
        flow.add_node(label)
        for name in node.input:
            if not name:
                continue
            if name in produced:
                producer = produced[name]
                flow.add_edge(producer.name or f"#{list(graph.node).index(producer)} {producer.op_type}", label)
            elif name not in defined:
                raise ModelError(
                    f"node '{label}' ({node.op_type}) reads '{name}', which no node, graph input or "
                    "initializer defines; the model is corrupt or was cut badly"
                )
    try:
        cycle = nx.find_cycle(flow)
    except nx.NetworkXNoCycle:
        return
    path = " -> ".join([edge[0] for edge in cycle] + [cycle[0][0]])
    raise ModelError(f"the graph has a cycle ({path}); ONNX graphs must be acyclic")


def _has_external_data(proto: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in _all_tensors(proto.graph))


def check_model_proto(proto: onnx.ModelProto, path: str | None = None) -> None:
    """Structure first (clear messages), then onnx.checker (by path when weights live outside)."""
    check_graph_structure(proto.graph)
    try:
        if path is not None and _has_external_data(proto):
            onnx.checker.check_model(path)  # resolves external data next to the model, not the cwd
        else:
            onnx.checker.check_model(proto)
    except (onnx.checker.ValidationError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"invalid ONNX model: {first}") from e


def call_without_weights(func: Callable[[onnx.ModelProto], _R], model: ir.Model) -> _R:
    """Call an onnx C++ API (checker, version converter) on ``model`` serialized without its weights.

    Initializers that are external, or larger than 1 KiB, become graph inputs (name, type and
    shape kept) for the call and are put back afterwards: the proto stays small whatever the
    model's size, no weight is copied, and onnx never resolves external data (which it does
    against the working directory for an in-memory proto). onnx_ir's private
    ``_c_api_utils.call_onnx_api`` does the same but keeps external tensors under 1000 bytes in
    the proto, which the checker then looks for in the cwd. The model is unchanged afterwards,
    whether ``func`` returns or raises.
    """
    graph = model.graph
    n_inputs = len(graph.inputs)
    moved: list[tuple[ir.Value, ir.TensorProtocol | None]] = []
    for value in list(graph.initializers.values()):
        tensor = value.const_value
        if tensor is not None and not isinstance(tensor, ir.ExternalTensor) and tensor.nbytes <= _SMALL_TENSOR_BYTES:
            continue
        if tensor is not None:
            value.shape = value.shape if value.shape is not None else tensor.shape
            value.dtype = value.dtype if value.dtype is not None else tensor.dtype
        moved.append((value, tensor))
        graph.initializers.pop(value.name)
        value.const_value = None
        if not value.is_graph_input():
            graph.inputs.append(value)
    try:
        return func(ir.serde.serialize_model(model))
    finally:
        user_inputs = graph.inputs[:n_inputs]
        graph.inputs.clear()
        graph.inputs.extend(user_inputs)
        for value, tensor in moved:
            value.const_value = tensor
            graph.initializers.add(value)


def check_model(model: ir.Model) -> None:
    """``check_model_proto`` on the model without its weights: cheap at any size, cwd-independent."""
    call_without_weights(check_model_proto, model)
