"""``to_torch``: an ONNX graph as a ``torch.fx.GraphModule``, built node by node with the FX Graph
API (no tracing).

The module's ``forward`` takes the graph inputs as keywords (ONNX names made Python-safe by
``names.SafeNames``; ``module.input_names`` maps ONNX name -> keyword), accepts torch tensors or
numpy arrays, and returns a tuple with one tensor per graph output, in order (a one-output graph
too). Float initializers become ``nn.Parameter`` s (``requires_grad=True``), the others buffers;
``module.parameter_names`` maps initializer name -> attribute. ``Constant`` nodes and tensor
attributes become buffers.

``train=True`` builds the train-mode module (``graphopt.fx.train``): the same forward, bit for bit,
with integer values carried as float64 so gradients reach integer weights (latent parameters),
quantization scales and requantization multipliers; ``trainable`` (fnmatch patterns) freezes the
other parameters; ``lora`` adds low-rank adapters (``graphopt.fx.lora``).
"""

from __future__ import annotations

import fnmatch
import inspect
import operator

import numpy as np
import onnx_ir as ir
import torch
from torch import fx

from graphopt.errors import UnsupportedError, UsageError
from graphopt.fx import converters, lora as lora_adapters, train as train_mode, train_parameters
from graphopt.fx.dtypes import as_tensor, check_tensor_type
from graphopt.fx.names import SafeNames
from graphopt.fx.straight_through import round_to_range

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
        """ONNX initializer name -> parameter attribute: the float initializers, and in train mode
        the integer latents too (``meta["onnx"]["parameter_dtypes"]`` has each one's ONNX type)."""
        return self.meta["onnx"]["parameter_names"]


def to_torch(model, *, train: bool = False, trainable=None, lora: dict | None = None) -> OnnxGraphModule:
    """``model`` (an .onnx path, ``onnx.ModelProto`` or ``onnx_ir.Model``) as an FX GraphModule.

    Eval-mode semantics by default (integer ops bit-exact with ONNX Runtime). ``train=True``: the
    same forward, differentiable through the integer ops (docs/torch.md, "Train mode").
    ``trainable``: fnmatch patterns over initializer names; the parameters no pattern matches get
    ``requires_grad=False``. ``lora``: ``{"rank", "layers", "alpha", "seed"}`` (train mode only).
    A node without a converter raises UnsupportedError naming its op and the node.
    """
    from graphopt.capture import load  # noqa: PLC0415 - graphopt's loader accepts all three forms

    if lora is not None and not train:
        raise UsageError("to_torch(lora=...) needs train=True")
    if isinstance(trainable, str):
        trainable = [trainable]
    ir_model = load(model)
    ir_model.graph.sort()
    options = lora_adapters.check_options(lora) if lora is not None else None
    return _Builder(ir_model, train=train, trainable=trainable, lora=options).build()


def _describe(node: ir.Node) -> str:
    return f"{node.domain + '::' if node.domain else ''}{node.op_type} (node {node.name!r})"


class _Builder:
    def __init__(self, model: ir.Model, *, train: bool = False, trainable=None, lora: dict | None = None) -> None:
        self.model = model
        self.train = train
        self.trainable = None if trainable is None else list(trainable)
        self.lora = lora
        self.lora_entries: dict[str, dict] = {}
        self.generator = torch.Generator().manual_seed(lora["seed"]) if lora else None
        self.parameter_dtypes: dict[str, str] = {}
        self.parameter_roles: dict[str, str] = {}
        self.parameter_encodings: dict[str, dict] = {}  # initializer -> how its latent is stored (shift codes)
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
            if self.train and train_mode.carried_dtype(value) is not None:
                self.nodes[value] = self.graph.call_function(train_mode.to_carrier, (self.nodes[value],))
        for node in graph:
            self._emit(node)
        self.graph.output(tuple(self._node_for(v) for v in graph.outputs))
        module = OnnxGraphModule(self.root, self.graph, class_name="OnnxGraphModule")
        module.meta["onnx"] = {
            "input_names": {v.name: self.input_names(v.name) for v in graph.inputs},
            "output_names": [v.name for v in graph.outputs],
            "parameter_names": dict(self.parameter_names),
            "parameter_dtypes": dict(self.parameter_dtypes),
            "parameter_roles": dict(self.parameter_roles),
            "parameter_encodings": dict(self.parameter_encodings),
            "train": self.train,
        }
        if self.lora is not None:
            module.meta["onnx"]["lora"] = dict(self.lora_entries)
        self._freeze(module)
        return module

    def _freeze(self, module: fx.GraphModule) -> None:
        """``trainable`` patterns: the other parameters stop learning (LoRA factors always learn,
        the weights they adapt never)."""
        for onnx_name, attribute in self.parameter_names.items():
            parameter = module.get_parameter(attribute)
            if onnx_name in self.lora_entries:
                parameter.requires_grad_(False)
            elif self.trainable is not None:
                chosen = any(fnmatch.fnmatchcase(onnx_name, p) or fnmatch.fnmatchcase(attribute, p) for p in self.trainable)
                parameter.requires_grad_(chosen)

    def _node_for(self, value: ir.Value | None):
        if value is None:
            return None
        if value not in self.nodes:  # an initializer, first read here
            if value.const_value is None:
                raise UnsupportedError(f"value {value.name!r} is read before any node makes it")
            if self.train:
                self.nodes[value] = self._train_initializer(value)
            else:
                self.nodes[value] = self._constant(value.name, value.const_value.numpy(), trainable=True)
                if value.name in self.parameter_names:
                    self.parameter_dtypes[value.name] = value.dtype.name
                    self.parameter_roles[value.name] = train_parameters.role(value)
        return self.nodes[value]

    def _train_initializer(self, value: ir.Value) -> fx.Node:
        """Float initializers and integer latents as parameters (with LoRA factors where asked),
        the other integer initializers as buffers (float64 carriers where carried)."""
        array = value.const_value.numpy()
        if (encoding := train_parameters.shift_codes(value)) is not None:  # packed codes: decoded weights learn
            node = self._constant(value.name, train_parameters.shift_latent(array, encoding), trainable=True)
            self.parameter_dtypes[value.name] = value.dtype.name
            self.parameter_roles[value.name] = train_parameters.role(value)
            self.parameter_encodings[value.name] = encoding
            return node
        bounds = train_parameters.latent_range(value)
        carried = train_mode.carried_dtype(value) is not None
        if bounds is None and not value.dtype.is_floating_point():  # (bfloat16 arrays are not np.floating)
            return self._constant(value.name, array.astype(np.float64) if carried else array, trainable=False)
        node = self._constant(value.name, array.astype(np.float64) if bounds else array, trainable=True)
        self.parameter_dtypes[value.name] = value.dtype.name
        self.parameter_roles[value.name] = train_parameters.role(value)
        if self.lora is not None and lora_adapters.wants_adapter(value, self.lora["layers"]):
            node = self._adapter(value, node)
        if bounds is not None:
            node = self.graph.call_function(round_to_range, (node, *bounds))
        return node

    def _adapter(self, value: ir.Value, weight: fx.Node) -> fx.Node:
        parameter = self.root.get_parameter(weight.target)
        a, b = lora_adapters.initial_factors(value.shape, self.lora["rank"], parameter.dtype, self.generator)
        names = {}
        for factor, tensor in (("A", a), ("B", b)):
            names[factor] = self.attribute_names(f"{value.name}_lora_{factor}")
            self.root.register_parameter(names[factor], torch.nn.Parameter(tensor, requires_grad=True))
        scale = self.lora["alpha"] / self.lora["rank"]
        self.lora_entries[value.name] = {**names, "scale": scale}
        nodes = [self.graph.get_attr(names["A"]), self.graph.get_attr(names["B"])]
        return self.graph.call_function(lora_adapters.adapted_weight, (weight, *nodes), {"scale": scale})

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
            array = _constant_value(node)
            if self.train and train_mode.carried_dtype(node.outputs[0]) is not None:
                array = array.astype(np.float64)  # a carried integer constant
            self.nodes[node.outputs[0]] = self._constant(node.outputs[0].name, array, trainable=False)
            return
        fn = self._converter(node)
        args = [self._node_for(v) for v in node.inputs]
        while args and args[-1] is None:
            args.pop()
        kwargs = {name: self._attribute(node, attr) for name, attr in node.attributes.items()}
        if node.op_type == "Split" and "num_outputs" not in kwargs:
            kwargs["num_outputs"] = len(node.outputs)  # opset < 18: equal parts, one per output
        _check_call(fn, node, args, kwargs)
        if self.train:
            fn = train_mode.converter(node, fn)
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
