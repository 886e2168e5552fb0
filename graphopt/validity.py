"""Structural validity of a model before any pass touches it: every error is one clear line.

onnx.checker catches most problems but speaks in multi-line protobuf dumps; the checks here
find the common ones first (undefined values, cycles, external data outside the model's
folder) and say which node and what to do.
"""

from __future__ import annotations

import os

from collections.abc import Callable
from typing import TypeVar

import google.protobuf.descriptor
import onnx
import onnx_ir as ir

from graphopt.errors import ModelError

__all__ = [
    "MAX_INPUT_BYTES",
    "MAX_TENSOR_BYTES",
    "call_without_weights",
    "check_external_data_paths",
    "check_graph_structure",
    "check_model",
    "check_model_proto",
    "check_proto",
]

_R = TypeVar("_R")
_SMALL_TENSOR_BYTES = 1024


def check_external_data_paths(proto: onnx.ModelProto, model_dir: str) -> None:
    """Refuse external data that points outside the model's folder (path traversal)."""
    root = os.path.realpath(model_dir)
    for tensor in _all_tensors(proto.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        if not isinstance(location, str) or not location or "\0" in location:
            raise ModelError(f"tensor '{_show(tensor.name)}' has no usable external-data location ({_show(location)!r}); the model is corrupt")
        target = os.path.realpath(os.path.join(root, location))
        if os.path.isabs(location) or os.path.commonpath([root, target]) != root:
            raise ModelError(
                f"tensor '{_show(tensor.name)}' stores its data at {_show(location)!r}, outside the model's folder; "
                "refusing to read it (move the data file next to the model)"
            )
        if not os.path.exists(target):
            raise ModelError(f"tensor '{_show(tensor.name)}' needs external data file {_show(location)!r}, which is missing next to the model")


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
    """Every node input is defined, no value is written twice, and the data flow has no cycle.

    Linear in the number of nodes and edges (a dict from value name to producing node index,
    and Kahn's topological sort for the cycle check).
    """
    nodes = graph.node
    defined = set(outer_scope) | {i.name for i in graph.input} | {t.name for t in graph.initializer}
    defined |= {t.values.name for t in graph.sparse_initializer}
    produced: dict[str, int] = {}
    for index, node in enumerate(nodes):
        for name in node.output:
            if not name:
                continue
            if name in produced:
                raise ModelError(
                    f"value '{_show(name)}' is written by two nodes ({_label(nodes, produced[name])} and "
                    f"{_label(nodes, index)}); every value must have one producer: the model is corrupt"
                )
            produced[name] = index
    successors: list[list[int]] = [[] for _ in range(len(nodes))]
    indegree = [0] * len(nodes)
    for index, node in enumerate(nodes):
        for name in node.input:
            if not name:
                continue
            producer = produced.get(name)
            if producer is not None:
                successors[producer].append(index)
                indegree[index] += 1
            elif name not in defined:
                raise ModelError(
                    f"node '{_label(nodes, index)}' ({_show(node.op_type)}) reads '{_show(name)}', which no node, "
                    "graph input or initializer defines; the model is corrupt or was cut badly"
                )
    ready = [i for i, d in enumerate(indegree) if d == 0]
    done = 0
    while ready:
        index = ready.pop()
        done += 1
        for succ in successors[index]:
            indegree[succ] -= 1
            if indegree[succ] == 0:
                ready.append(succ)
    if done == len(nodes):
        return
    raise ModelError(f"the graph has a cycle ({_find_cycle(nodes, produced, indegree)}); ONNX graphs must be acyclic")


def _label(nodes, index: int) -> str:
    node = nodes[index]
    return _show(node.name) if node.name else f"#{index} {_show(node.op_type)}"


def _find_cycle(nodes, produced: dict[str, int], indegree: list[int]) -> str:
    """A readable cycle among the nodes Kahn's sort could not order (indegree still > 0)."""
    start = next(i for i, d in enumerate(indegree) if d > 0)
    order: list[int] = []
    position: dict[int, int] = {}
    index = start
    while index not in position:  # walk back through unsorted producers: must close a loop
        position[index] = len(order)
        order.append(index)
        index = next(
            produced[name] for name in nodes[index].input if name in produced and indegree[produced[name]] > 0
        )
    loop = list(reversed(order[position[index]:]))
    first = loop.index(min(loop))  # start where the file does
    loop = loop[first:] + loop[:first]
    return " -> ".join(_label(nodes, i) for i in [*loop, loop[0]])


# Resource limits: a tensor declaring more than this is refused before anything allocates it
# (above any single weight or input of real models; far above what this tool can hold).
MAX_TENSOR_BYTES = 1 << 36
# A graph input's static shape (symbolic dimensions counted as 1) above this is refused too:
# every run feeds such a tensor (validation feeds several), so it must fit in memory many times.
MAX_INPUT_BYTES = 1 << 32
_MAX_SHOWN = 80
_CONTROL = {c: f"\\x{c:02x}" for c in [*range(32), 127]} | {10: "\\n", 13: "\\r", 9: "\\t"}
_STRING = google.protobuf.descriptor.FieldDescriptor.TYPE_STRING
_MESSAGE = google.protobuf.descriptor.FieldDescriptor.TYPE_MESSAGE
_KNOWN_DTYPES = frozenset(int(t) for t in ir.DataType)
_ATTRIBUTE_TYPES = frozenset(onnx.AttributeProto.AttributeType.values())
# typed storage field per data type and values stored per element (raw_data aside)
_TYPED_FIELD = {
    onnx.TensorProto.FLOAT: ("float_data", 1), onnx.TensorProto.COMPLEX64: ("float_data", 2),
    onnx.TensorProto.DOUBLE: ("double_data", 1), onnx.TensorProto.COMPLEX128: ("double_data", 2),
    onnx.TensorProto.INT64: ("int64_data", 1), onnx.TensorProto.UINT32: ("uint64_data", 1),
    onnx.TensorProto.UINT64: ("uint64_data", 1), onnx.TensorProto.STRING: ("string_data", 1),
    **{t: ("int32_data", 1) for t in (onnx.TensorProto.INT32, onnx.TensorProto.INT16, onnx.TensorProto.INT8,
                                      onnx.TensorProto.UINT16, onnx.TensorProto.UINT8, onnx.TensorProto.BOOL,
                                      onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)},
}
_DATA_FIELDS = ("raw_data", "float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")


def _show(text: str | bytes) -> str:
    """User text for a one-line message: control characters escaped, long names cut."""
    if isinstance(text, bytes):
        return repr(text)[:_MAX_SHOWN]
    text = text.translate(_CONTROL)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def check_proto(proto: onnx.ModelProto, model_dir: str | None = None) -> None:
    """Checks on the raw protobuf that must pass before onnx_ir can even deserialize it.

    Text fields are valid UTF-8; data-type and attribute-type enums are known; no value is
    written twice and graph outputs are distinct; tensors declare non-negative dimensions and at
    most ``MAX_TENSOR_BYTES``, and carry the data their shape implies (raw bytes, typed values,
    or an external-data range inside its file); graph inputs have no zero-size dimension.
    Nothing is allocated: only lengths are compared. ``model_dir`` resolves external data.
    """
    _check_text(proto, "model")
    if not proto.graph.output:
        raise ModelError("the graph has no outputs: nothing could be computed or checked; the model is corrupt or was cut badly")
    if model_dir is not None:
        check_external_data_paths(proto, model_dir)
    for graph, where in _all_graphs(proto):
        _check_graph(graph, where, model_dir)
    for function in proto.functions:
        _check_nodes(function.node, f"function {_show(function.name)}", model_dir)
        _check_unique_outputs(function.node, [*function.input], f"function {_show(function.name)}")


def _check_text(message, where: str) -> None:
    """Every string field (recursively) decoded as UTF-8; tensors' payloads are not visited."""
    stack = [message]
    while stack:
        message = stack.pop()
        if isinstance(message, onnx.TensorProto):
            fields = [(f, message.name) for f in (message.DESCRIPTOR.fields_by_name["name"],)]
            fields += [(message.DESCRIPTOR.fields_by_name["external_data"], message.external_data)]
        else:
            fields = message.ListFields()
        for field, value in fields:
            if field.type == _STRING:
                values = value if field.is_repeated else (value,)
                for text in values:
                    if isinstance(text, bytes):  # the protobuf runtime hands back invalid UTF-8 as bytes
                        kind = type(message).__name__.removesuffix("Proto").lower()
                        raise ModelError(
                            f"{where}: a {kind}'s {field.name} is not valid UTF-8 ({_show(text)}); "
                            "the file is corrupt: re-export the model"
                        )
            elif field.type == _MESSAGE:
                if field.is_repeated:
                    if field.message_type.GetOptions().map_entry:
                        continue
                    stack.extend(value)
                else:
                    stack.append(value)


def _all_graphs(proto: onnx.ModelProto):
    stack = [(proto.graph, "graph")]
    for function in proto.functions:
        stack.extend((a.g, f"function {_show(function.name)}") for n in function.node for a in n.attribute if a.HasField("g"))
    while stack:
        graph, where = stack.pop()
        yield graph, where
        for node in graph.node:
            for attr in node.attribute:
                inner = f"subgraph {_show(attr.name)} of node {_show(node.name or node.op_type)}"
                if attr.HasField("g"):
                    stack.append((attr.g, inner))
                stack.extend((g, inner) for g in attr.graphs)


def _check_graph(graph: onnx.GraphProto, where: str, model_dir: str | None) -> None:
    for tensor in graph.initializer:
        _check_tensor(tensor, f"{where}: initializer '{_show(tensor.name)}'", model_dir)
    for sparse in graph.sparse_initializer:
        _check_tensor(sparse.values, f"{where}: sparse initializer '{_show(sparse.values.name)}'", model_dir)
        _check_tensor(sparse.indices, f"{where}: sparse initializer indices '{_show(sparse.indices.name)}'", model_dir)
    weights = {t.name for t in graph.initializer}  # old IRs also list initializers as inputs
    for kind, values in (("input", graph.input), ("output", graph.output), ("value_info", graph.value_info)):
        for value in values:
            real_input = kind == "input" and value.name not in weights
            _check_type(value.type, f"{where}: {kind} '{_show(value.name)}'", graph_input=real_input)
    outputs: set[str] = set()
    for value in graph.output:
        if value.name in outputs:
            raise ModelError(f"{where}: output '{_show(value.name)}' is listed twice; graph outputs must have distinct names")
        outputs.add(value.name)
    _check_nodes(graph.node, where, model_dir)
    defined = [*(i.name for i in graph.input), *(t.name for t in graph.initializer)]
    _check_unique_outputs(graph.node, defined, where)


def _check_nodes(nodes, where: str, model_dir: str | None) -> None:
    for node in nodes:
        for attr in node.attribute:
            if attr.type not in _ATTRIBUTE_TYPES or attr.type == onnx.AttributeProto.UNDEFINED:
                raise ModelError(  # protobuf reads an unknown enum value as UNDEFINED (0)
                    f"{where}: attribute '{_show(attr.name)}' of node '{_show(node.name or node.op_type)}' has an "
                    "unknown or missing type; the file is corrupt or from a newer ONNX"
                )
            what = f"{where}: attribute '{_show(attr.name)}' of node '{_show(node.name or node.op_type)}'"
            if attr.HasField("t"):
                _check_tensor(attr.t, what, model_dir)
            for tensor in attr.tensors:
                _check_tensor(tensor, what, model_dir)
            if attr.HasField("tp"):
                _check_type(attr.tp, what)
            for tp in attr.type_protos:
                _check_type(tp, what)


def _check_unique_outputs(nodes, defined, where: str) -> None:
    writers = dict.fromkeys(defined, "the graph's inputs or initializers")
    for index, node in enumerate(nodes):
        label = f"node '{_show(node.name)}'" if node.name else f"node #{index} ({_show(node.op_type)})"
        for name in node.output:
            if not name:
                continue
            if name in writers:
                raise ModelError(
                    f"{where}: value '{_show(name)}' is written by {writers[name]} and by {label}; every value must "
                    "have one producer: the model is corrupt"
                )
            writers[name] = label


def _check_dtype(dtype: int, where: str, allow_undefined: bool) -> None:
    if dtype not in _KNOWN_DTYPES or (dtype == 0 and not allow_undefined):
        raise ModelError(f"{where} has an unknown data type ({dtype}); the file is corrupt or from a newer ONNX")


def _check_type(tp: onnx.TypeProto, where: str, graph_input: bool = False) -> None:
    while True:
        kind = tp.WhichOneof("value")
        if kind in ("tensor_type", "sparse_tensor_type"):
            tensor_type = getattr(tp, kind)
            if graph_input and tensor_type.elem_type == onnx.TensorProto.UNDEFINED:
                raise ModelError(f"{where} has no data type (elem_type 0): nothing can be fed to it; the model is corrupt")
            _check_dtype(tensor_type.elem_type, where, allow_undefined=True)
            if tensor_type.HasField("shape"):
                dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
                if any(d is not None and d < 0 for d in dims):
                    raise ModelError(f"{where} declares a negative dimension {_dims(dims)}; the model is corrupt")
                if graph_input and 0 in dims:
                    raise ModelError(
                        f"{where} declares a zero-size dimension {_dims(dims)}: an input cannot be empty; "
                        "re-export with a real size or a symbolic dimension"
                    )
                if None not in dims and tensor_type.elem_type in _KNOWN_DTYPES:
                    _check_size(dims, tensor_type.elem_type, where)
                if graph_input and tensor_type.elem_type in _KNOWN_DTYPES and tensor_type.elem_type:
                    at_least = _nbytes([1 if d is None else d for d in dims], tensor_type.elem_type)
                    if at_least > MAX_INPUT_BYTES:
                        shown = "[" + ", ".join(d.dim_param or "?" if not d.HasField("dim_value") else str(d.dim_value)
                                                for d in tensor_type.shape.dim) + "]"
                        raise ModelError(
                            f"{where} declares {shown} {ir.DataType(tensor_type.elem_type).name}: at least {at_least:,} "
                            f"bytes per sample, more than the {MAX_INPUT_BYTES:,}-byte input limit; the shape is corrupt"
                        )
            return
        if kind == "sequence_type":
            tp = tp.sequence_type.elem_type
        elif kind == "optional_type":
            tp = tp.optional_type.elem_type
        elif kind == "map_type":
            _check_dtype(tp.map_type.key_type, where, allow_undefined=True)
            tp = tp.map_type.value_type
        else:
            return


def _dims(dims) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def _nbytes(dims, dtype: int) -> int:
    numel = 1
    for d in dims:
        numel *= d
    try:
        bits = ir.DataType(dtype).bitwidth
    except (TypeError, ValueError):  # STRING (bytes per element unknown: count one), UNDEFINED
        bits = 8
    return (numel * bits + 7) // 8


def _check_size(dims, dtype: int, where: str) -> int:
    nbytes = _nbytes(dims, dtype)
    if nbytes > MAX_TENSOR_BYTES:
        raise ModelError(
            f"{where} declares {_dims(dims)} {ir.DataType(dtype).name} = {nbytes:,} bytes, more than the "
            f"{MAX_TENSOR_BYTES:,}-byte limit; the model is corrupt or its shape is wrong"
        )
    return nbytes


def _check_tensor(tensor: onnx.TensorProto, where: str, model_dir: str | None) -> None:
    _check_dtype(tensor.data_type, where, allow_undefined=False)
    dims = list(tensor.dims)
    if any(d < 0 for d in dims):
        raise ModelError(f"{where} declares a negative dimension {_dims(dims)}; the model is corrupt")
    nbytes = _check_size(dims, tensor.data_type, where)
    numel = 1
    for d in dims:
        numel *= d
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        _check_external_range(tensor, nbytes, where, model_dir)
        return
    if tensor.HasField("raw_data"):
        have = len(tensor.raw_data)  # one transient copy of this tensor's bytes (upb has no zero-copy view)
        if tensor.data_type != onnx.TensorProto.STRING and have != nbytes:
            raise ModelError(
                f"{where} declares {_dims(dims)} {ir.DataType(tensor.data_type).name} ({nbytes:,} bytes) but holds "
                f"{have:,} bytes of data; the file is truncated or corrupt"
            )
        return
    field = _TYPED_FIELD.get(tensor.data_type)
    if field is not None:
        have = len(getattr(tensor, field[0]))
        if have != numel * field[1]:
            raise ModelError(
                f"{where} declares {_dims(dims)} ({numel:,} elements) but holds {have:,} values in {field[0]}; "
                "the file is truncated or corrupt"
            )
    elif numel and not any(len(getattr(tensor, f)) for f in _DATA_FIELDS if f != "raw_data"):
        raise ModelError(f"{where} declares {_dims(dims)} ({numel:,} elements) but holds no data; the file is corrupt")


def _check_external_range(tensor: onnx.TensorProto, nbytes: int, where: str, model_dir: str | None) -> None:
    entries = {e.key: e.value for e in tensor.external_data}
    numbers = {}
    for key in ("offset", "length"):
        if key in entries:
            try:
                numbers[key] = int(entries[key])
            except ValueError:
                numbers[key] = -1
            if numbers[key] < 0:
                raise ModelError(
                    f"{where}: external-data {key} {_show(entries[key])!s} is not a non-negative byte count; "
                    "the model is corrupt"
                )
    if model_dir is None or "location" not in entries:
        return
    target = os.path.join(model_dir, entries["location"])
    try:
        size = os.path.getsize(target)
    except OSError:
        return  # missing or unreadable: check_external_data_paths says so
    offset = numbers.get("offset", 0)
    length = numbers.get("length", size - offset)
    if length < nbytes:
        raise ModelError(
            f"{where}: external data holds {max(length, 0):,} bytes, its shape needs {nbytes:,}; the model or "
            f"{_show(entries['location'])} is corrupt"
        )
    if offset + length > size:
        raise ModelError(
            f"{where}: external data range {offset:,}+{length:,} runs past the end of "
            f"{_show(entries['location'])} ({size:,} bytes); the data file is truncated or the model is corrupt"
        )


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
    try:
        call_without_weights(check_model_proto, model)
    except ir.serde.SerdeError as e:  # onnx_ir cannot write what it read: the model's fault
        cause = e
        while cause.__cause__ is not None and isinstance(cause, ir.serde.SerdeError):
            cause = cause.__cause__
        text = str(cause).strip().splitlines()
        raise ModelError(f"invalid ONNX model: {text[0] if text else type(cause).__name__}") from e
