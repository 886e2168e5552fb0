"""``to_torch``: an ONNX graph as a ``torch.fx.GraphModule``, built node by node with the FX Graph
API (no tracing).

The module's ``forward`` takes the graph inputs as keywords (ONNX names made Python-safe by
``names.SafeNames``; ``module.input_names`` maps ONNX name -> keyword), accepts torch tensors or
numpy arrays, and returns a tuple with one tensor per graph output, in order (a one-output graph
too). Float initializers become ``nn.Parameter`` s (``requires_grad=True``), the others buffers;
``module.parameter_names`` maps initializer name -> attribute. ``Constant`` nodes and tensor
attributes become buffers.
"""

from __future__ import annotations

import inspect
import operator

import numpy as np
import onnx_ir as ir
import torch
from torch import fx

from graphopt.errors import UnsupportedError
from graphopt.fx import converters
from graphopt.fx.dtypes import as_tensor, check_tensor_type
from graphopt.fx.names import SafeNames

__all__ = ["OnnxGraphModule", "to_torch"]


class OnnxGraphModule(fx.GraphModule):
    """A GraphModule built from an ONNX graph; the name maps live in ``meta["onnx"]``, which
    ``copy.deepcopy`` keeps (plain attributes it drops)."""

    @property
    def input_names(self) -> dict[str, str]:
        """ONNX graph input name -> ``forward`` keyword."""
        return self.meta["onnx"]["input_names"]

    @property
    def output_names(self) -> list[str]:
        """The ONNX graph outputs, in the order ``forward`` returns them."""
        return self.meta["onnx"]["output_names"]

    @property
    def parameter_names(self) -> dict[str, str]:
        """ONNX float initializer name -> parameter attribute."""
        return self.meta["onnx"]["parameter_names"]


def to_torch(model) -> OnnxGraphModule:
    """``model`` (an .onnx path, ``onnx.ModelProto`` or ``onnx_ir.Model``) as an FX GraphModule.

    Eval-mode semantics (integer ops bit-exact with ONNX Runtime). A node without a converter
    raises UnsupportedError naming its op and the node.
    """
    from graphopt.capture import load  # noqa: PLC0415 - graphopt's loader accepts all three forms

    ir_model = load(model)
    ir_model.graph.sort()
    return _Builder(ir_model).build()


def _describe(node: ir.Node) -> str:
    return f"{node.domain + '::' if node.domain else ''}{node.op_type} (node {node.name!r})"


class _Builder:
    def __init__(self, model: ir.Model) -> None:
        self.model = model
        self.graph = fx.Graph()
        self.root = torch.nn.Module()
        self.table = converters.converter_table()
        self.attribute_names = SafeNames(reserved=set(dir(fx.GraphModule)))
        self.input_names = SafeNames(reserved={"self"})
        self.nodes: dict[ir.Value, fx.Node] = {}
        self.parameter_names: dict[str, str] = {}

    def build(self) -> fx.GraphModule:
        graph = self.model.graph
        _check_value_types(graph)
        for value in graph.inputs:
            placeholder = self.graph.placeholder(self.input_names(value.name))
            self.nodes[value] = self.graph.call_function(as_tensor, (placeholder,))
        for node in graph:
            self._emit(node)
        self.graph.output(tuple(self._node_for(v) for v in graph.outputs))
        module = OnnxGraphModule(self.root, self.graph, class_name="OnnxGraphModule")
        module.meta["onnx"] = {
            "input_names": {v.name: self.input_names(v.name) for v in graph.inputs},
            "output_names": [v.name for v in graph.outputs],
            "parameter_names": dict(self.parameter_names),
        }
        return module

    def _node_for(self, value: ir.Value | None):
        if value is None:
            return None
        if value not in self.nodes:  # an initializer, first read here
            if value.const_value is None:
                raise UnsupportedError(f"value {value.name!r} is read before any node makes it")
            self.nodes[value] = self._constant(value.name, value.const_value.numpy(), trainable=True)
        return self.nodes[value]

    def _constant(self, name: str, array: np.ndarray, *, trainable: bool) -> fx.Node:
        attribute = self.attribute_names(name or "constant")
        tensor = as_tensor(np.array(array, copy=True))
        if trainable and tensor.is_floating_point():
            self.root.register_parameter(attribute, torch.nn.Parameter(tensor, requires_grad=True))
            self.parameter_names[name] = attribute
        else:
            self.root.register_buffer(attribute, tensor)
        return self.graph.get_attr(attribute)

    def _emit(self, node: ir.Node) -> None:
        if node.op_type == "Constant" and node.domain in converters.STANDARD_DOMAINS:
            self.nodes[node.outputs[0]] = self._constant(node.outputs[0].name, _constant_value(node), trainable=False)
            return
        fn = self._converter(node)
        args = [self._node_for(v) for v in node.inputs]
        while args and args[-1] is None:
            args.pop()
        kwargs = {name: self._attribute(node, attr) for name, attr in node.attributes.items()}
        if node.op_type == "Split" and "num_outputs" not in kwargs:
            kwargs["num_outputs"] = len(node.outputs)  # opset < 18: equal parts, one per output
        _check_call(fn, node, args, kwargs)
        call = self.graph.call_function(fn, tuple(args), kwargs)
        self._bind_outputs(node, call)

    def _converter(self, node: ir.Node):
        fn = self.table.get((node.domain, node.op_type))
        if fn is None:
            raise UnsupportedError(f"{_describe(node)} has no torch converter in graphopt.fx")
        needed = converters.MIN_OPSET.get(node.op_type)
        opset = self.model.opset_imports.get("", 0)
        if needed and node.domain in converters.STANDARD_DOMAINS and opset < needed:
            raise UnsupportedError(f"{_describe(node)} at opset {opset}: graphopt.fx converts opset {needed}+")
        return fn

    def _attribute(self, node: ir.Node, attr: ir.Attr):
        if attr.type == ir.AttributeType.TENSOR:
            return self._constant(f"{node.name}_{attr.name}", attr.value.numpy(), trainable=False)
        if attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
            raise UnsupportedError(f"{_describe(node)}: subgraph attribute {attr.name!r} has no torch converter")
        value = attr.value
        return list(value) if isinstance(value, (tuple, list)) else value

    def _bind_outputs(self, node: ir.Node, call: fx.Node) -> None:
        if (node.domain, node.op_type) in converters.MULTI_OUTPUT:
            for i, out in enumerate(node.outputs):
                self.nodes[out] = self.graph.call_function(operator.getitem, (call, i))
            return
        self.nodes[node.outputs[0]] = call
        for i, out in enumerate(node.outputs[1:], start=1):
            if out.uses() or out.is_graph_output():
                raise UnsupportedError(f"{_describe(node)}: output {i} ({out.name!r}) has no torch converter")


def _check_value_types(graph: ir.Graph) -> None:
    for value in [*graph.inputs, *graph.initializers.values()]:
        if value.type is not None and not isinstance(value.type, ir.TensorType):
            raise UnsupportedError(f"graph input {value.name!r} is a {value.type}: graphopt.fx converts tensors only")
        check_tensor_type(f"graph input {value.name!r}", value.dtype)


def _constant_value(node: ir.Node) -> np.ndarray:
    (name, attr), = node.attributes.items()
    kinds = {"value": lambda v: v.numpy(), "value_float": lambda v: np.float32(v), "value_int": lambda v: np.int64(v),
             "value_floats": lambda v: np.asarray(v, np.float32), "value_ints": lambda v: np.asarray(v, np.int64)}
    if name not in kinds:
        raise UnsupportedError(f"{_describe(node)}: Constant {name!r} has no torch converter")
    return np.asarray(kinds[name](attr.value))


def _check_call(fn, node: ir.Node, args: list, kwargs: dict) -> None:
    """Refuse, while building, an input or attribute the converter does not take."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # a torch builtin: inputs only
        if kwargs:
            raise UnsupportedError(f"{_describe(node)}: attributes {sorted(kwargs)} have no torch converter") from None
        return
    try:
        signature.bind(*args, **kwargs)
    except TypeError as error:
        raise UnsupportedError(f"{_describe(node)}: {error} (graphopt.fx converter {fn.__name__})") from None
