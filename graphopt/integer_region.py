"""The integer-only verifier: is everything between QuantizeLinear and DequantizeLinear integer?

    report = verify(model)            # an onnx_ir.Model
    report.ok                         # an integer region exists and has no float op
    print("\\n".join(report.lines())) # the verdict, one line per float op

Definitions (what ``graphopt inspect --integer-only`` and ``compile(integer_only=True)`` check):

- The model is analysed with every local function inlined (graphopt ops get their
  ``pkg.graphopt`` function bodies first, as ``ops.attach_functions`` would) and types inferred
  (``onnx.shape_inference``), so a float value inside a graphopt op's body is seen like any other.
- **Data edges.** A node's data inputs are its inputs (plus the outer values its subgraphs read);
  for ``QuantizeLinear`` / ``DequantizeLinear`` / ``DynamicQuantizeLinear`` only input 0 and
  output 0: scales and zero points are not region values. ``Shape`` and ``Size`` have no data
  input: they read a tensor's shape, not its values (a batch size taken from a float image).
- **Entries** are the QuantizeLinear nodes with no DequantizeLinear upstream: where float input
  (or float preprocessing of an input, such as an attention mask) is quantized.
- **The integer region** is everything some DequantizeLinear reads, directly or through other
  nodes, walking back up to the entries (not past them): integer graph inputs (token ids) and
  the shape arithmetic on them are in it, the float work before an entry is not. **Exits** are
  the DequantizeLinear nodes outside the region (the last ones). A DequantizeLinear /
  QuantizeLinear pair *inside* the region (a float round trip between two integer ops, e.g.
  islands that were not chained) is made of region nodes, so it is reported.
- **A float op** is a region node with a float-typed data input or output (float32, float16,
  bfloat16, double, float8/6/4 and complex types), or with such a value inside one of its
  subgraphs. A value whose type is still unknown after inference cannot be proven integer: it is
  reported as a float op with dtype ``"unknown type"``.
- Float ops outside the region (e.g. the float preprocessing of an attention mask before its
  QuantizeLinear, pooling after the last DequantizeLinear) are listed as information only.

``ok`` is False when there is no integer region at all (no DequantizeLinear, or none that reads
a computed value) or when the region has a float op. Nodes that came from inlining a function
name the function and the calling node (``<call node>/<function>/<body node>``).

**Where the region stops.** Of the float ops in the region, the ones to look at first (``stops``,
each a ``Decline`` of rule ``integer-only`` with what to do): the ops ``integer-chain`` has no
integer lowering for (the sdpa export's ``IsNaN`` guard, an ``Erf`` that no pass took); if there is
none, the ops it lowers but did not here (its declines say why: GPT-2's fused QKV ``Split`` when
one of its outputs reaches an op without a lowering); then the QuantizeLinear nodes left in
float. The DequantizeLinear before such an op is where the float starts, never the reason.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import re
from typing import Any

import onnx
import onnx.inliner
import onnx.shape_inference
import onnx_ir as ir

from graphopt import ops
from graphopt.rewrite import Decline
from graphopt.validity import call_without_weights

__all__ = ["FloatOp", "IntegerRegionReport", "stops", "verify"]

logger = logging.getLogger(__name__)

UNKNOWN = "unknown type"
_STANDARD = ("", "ai.onnx", "com.microsoft")
_QUANTIZE = {"QuantizeLinear", "DynamicQuantizeLinear"}
_DEQUANTIZE = {"DequantizeLinear"}
_METADATA_ONLY = {"Shape", "Size"}  # integer results from a tensor's shape: no float is read
_FLOAT_TYPES = {
    value for name, value in onnx.TensorProto.DataType.items() if name.startswith(("FLOAT", "BFLOAT", "DOUBLE", "COMPLEX"))
}
_DTYPE_NAMES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.DOUBLE: "float64"}
_INLINED_NAME = re.compile(r"^__graphopt_inlined_(\d+)(?:__\d+)*$")


@dataclasses.dataclass(frozen=True)
class FloatOp:
    """A node with float-typed (or untyped) values; ``values`` are (value name, dtype) pairs."""

    node: str
    op_type: str
    values: tuple[tuple[str, str], ...]
    function: str | None = None  # "domain::Name" of the function body the node came from
    call: str | None = None  # the model's node that called that function

    def __str__(self) -> str:
        values = ", ".join(f"{name} {dtype}" for name, dtype in self.values)
        where = f", in {self.function}" + (f" called by '{self.call}'" if self.call else "") if self.function else ""
        return f"node '{self.node}' ({self.op_type}{where}): {values}"

    def as_dict(self) -> dict[str, Any]:
        return {"node": self.node, "op_type": self.op_type, "values": [{"name": n, "dtype": d} for n, d in self.values],
                "function": self.function, "call": self.call}


@dataclasses.dataclass
class IntegerRegionReport:
    entries: list[str]  # QuantizeLinear nodes that start the region
    exits: list[str]  # DequantizeLinear nodes that end it
    nodes: int  # region nodes, counted with functions inlined
    float_ops: list[FloatOp]  # region nodes with a float (or unknown-type) value: the failures
    outside_float_ops: list[FloatOp]  # information: float nodes that are not in the region
    functions: dict[str, int] = dataclasses.field(default_factory=dict)  # function calls in the region, by op
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def has_region(self) -> bool:
        return bool(self.exits and self.nodes)

    @property
    def ok(self) -> bool:
        return self.has_region and not self.float_ops

    @property
    def stops(self) -> list[Decline]:
        """The float ops that stopped the integer region, with what to do (module docstring)."""
        return stops(self.float_ops)

    def summary(self) -> str:
        """One line: the verdict."""
        if not self.has_region:
            outside = f" ({len(self.outside_float_ops)} float ops)" if self.outside_float_ops else ""
            return f"integer-only: no integer region: no DequantizeLinear reads a computed integer value{outside}"
        span = f"{self.nodes} nodes between {len(self.entries)} entries and {len(self.exits)} exits"
        if self.float_ops:
            unknown = sum(any(d.startswith(UNKNOWN) for _, d in op.values) for op in self.float_ops)
            untyped = f", {unknown} with values of unknown type" if unknown else ""
            first, more = self.stops[0], len(self.stops) - 1
            return (f"integer-only: {len(self.float_ops)} float ops in the integer region{untyped} ({span}); "
                    f"at '{first.node}'{f' (and {more} more)' if more else ''}: {first.reason}")
        return f"integer-only: {span}, no float op"

    def lines(self) -> list[str]:
        """The verdict for people: one line per float op in the region, one per op that stopped it
        (``declined: integer-only at ...``), then the summary line."""
        return [*(f"float op: {op}" for op in self.float_ops), *(f"declined: {d}" for d in self.stops), self.summary(),
                *(f"note: {n}" for n in self.notes)]

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "verdict": self.summary(),
            "entries": list(self.entries),
            "exits": list(self.exits),
            "nodes": self.nodes,
            "float_ops": [op.as_dict() for op in self.float_ops],
            "stops": [{"node": d.node, "reason": d.reason} for d in self.stops],
            "outside_float_ops": [op.as_dict() for op in self.outside_float_ops],
            "functions": dict(self.functions),
            "notes": list(self.notes),
        }


# ---- where the region stops ------------------------------------------------------------------

# ops that an ivit pass replaces by an integer op: when one is left in float, that pass declined it
_REPLACED_BY = {"Softmax": "shiftmax", "Gelu": "shiftgelu", "LayerNormalization": "ilayernorm", "RMSNormalization": "irmsnorm",
                "MatMul": "int8-linear", "Gemm": "int8-linear"}
_ADVICE = {
    "IsNaN": "the sdpa export's NaN guard Where(IsNaN(p), 0, p) on float values (integer values are never NaN): shiftmax "
             "absorbs it right after a Softmax; elsewhere rewrite it away before ivit, or export with attn_implementation='eager'",
}
_EXPLAIN = "graphopt explain MODEL --passes ivit"


def stops(float_ops: list[FloatOp]) -> list[Decline]:
    """The float ops that stopped the integer region, first the ones to fix (module docstring)."""
    from graphopt.passes.integer_chain import LOWERINGS  # noqa: PLC0415 — the rules that decide what can be integer

    compute = [op for op in float_ops if op.op_type not in _QUANTIZE | _DEQUANTIZE]
    unlowerable = [op for op in compute if op.op_type not in LOWERINGS]
    chosen = unlowerable or compute or [op for op in float_ops if op.op_type in _QUANTIZE] or float_ops[:1]
    return [Decline("integer-only", op.node, f"{_what(op)} stops the integer region: {_advice(op, LOWERINGS)}") for op in chosen]


def _what(op: FloatOp) -> str:
    values = ", ".join(f"{name} {dtype}" for name, dtype in op.values[:3]) + (", ..." if len(op.values) > 3 else "")
    return f"{op.op_type}{f' in {op.function}' if op.function else ''} ({values})"


def _advice(op: FloatOp, lowerings) -> str:
    if op.op_type in _ADVICE:
        return _ADVICE[op.op_type]
    if op.op_type in _QUANTIZE:
        return f"integer-chain did not lower this QuantizeLinear's input; its declines say why ({_EXPLAIN})"
    if op.op_type in _DEQUANTIZE:
        return "a value leaves the region here and comes back in float"
    if op.op_type in lowerings:
        return f"integer-chain lowers {op.op_type}, but not here; its declines say why ({_EXPLAIN})"
    if op.op_type in _REPLACED_BY:
        return f"{_REPLACED_BY[op.op_type]} replaces {op.op_type} with integer ops but declined this one; its declines say why ({_EXPLAIN})"
    if any(dtype.startswith(UNKNOWN) for _, dtype in op.values):
        return "a value of unknown type cannot be proven integer: fix the model's types, or its shapes with --input-shape"
    return (f"integer-chain has no integer lowering for {op.op_type}: compute it before the first QuantizeLinear or after "
            "the last DequantizeLinear, or accept a float island (--no-integer-only)")


def verify(model: ir.Model) -> IntegerRegionReport:
    """Find the integer region of ``model`` and every float op in it (see the module docstring).

    The model is not modified: the analysis runs on a weight-free serialized copy.
    """
    notes: list[str] = []
    graph, labels = call_without_weights(lambda proto: _inline_and_infer(proto, notes), model)
    return _analyse(graph, labels, notes)


# ---- preparing the graph --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Label:
    """Where a node of the inlined graph came from."""

    node: str
    function: str | None = None  # the function body the node came from
    call: str | None = None  # the model's node that called it
    call_op: str | None = None  # that node's function
    opaque: bool = False  # a function call left in place (inlining failed): its body is unchecked


def _function_key(domain: str, name: str, overload: str = "") -> tuple[str, str, str]:
    return (domain or "", name, overload or "")


def _attach_missing_functions(proto: onnx.ModelProto) -> None:
    """Add the body of every graphopt op the graph calls but the model does not define."""
    defined = {_function_key(f.domain, f.name, f.overload) for f in proto.functions}
    used = sorted({n.op_type for n in _all_nodes(proto.graph) if n.domain == ops.DOMAIN} |
                  {n.op_type for f in proto.functions for n in f.node if n.domain == ops.DOMAIN})
    imports = {o.domain: o for o in proto.opset_import}
    for name in used:
        if _function_key(ops.DOMAIN, name) in defined:
            continue
        try:
            function = ops.get_op(name).function_proto
        except KeyError:  # not a declared op: its outputs stay untyped and are reported
            continue
        for opset in function.opset_import:
            if opset.domain in imports:
                opset.version = imports[opset.domain].version
            else:
                imports[opset.domain] = proto.opset_import.add(domain=opset.domain, version=opset.version)
        proto.functions.append(function)
    if used and ops.DOMAIN not in imports:
        proto.opset_import.add(domain=ops.DOMAIN, version=ops.OPSET_VERSION)


def _all_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for g in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _all_nodes(g)


def _inline_and_infer(proto: onnx.ModelProto, notes: list[str]) -> tuple[onnx.GraphProto, list[_Label]]:
    _attach_missing_functions(proto)
    top = [_Label(n.name or f"#{i} {n.op_type}") for i, n in enumerate(proto.graph.node)]
    labels = top
    if proto.functions:
        local = {_function_key(f.domain, f.name, f.overload) for f in proto.functions}
        labels = [dataclasses.replace(label, opaque=_function_key(n.domain, n.op_type, n.overload) in local)
                  for n, label in zip(proto.graph.node, top)]
        # Name every body node with a token the inliner keeps (it only appends "__<call counter>"),
        # so an inlined node says which function body and which body node it came from.
        body_labels: list[tuple[str, str]] = []
        functions = {}
        for function in proto.functions:
            qualified = f"{function.domain}::{function.name}" if function.domain else function.name
            functions[_function_key(function.domain, function.name, function.overload)] = function
            for i, node in enumerate(function.node):
                body_labels.append((qualified, f"{function.name}/{node.name or f'{node.op_type}_{i}'}"))
                node.name = f"__graphopt_inlined_{len(body_labels) - 1}"
        sizes = _expanded_sizes(functions)
        try:
            inlined = onnx.inliner.inline_local_functions(proto)
        except Exception as e:  # noqa: BLE001 — reported: the call nodes then stay opaque (unknown types)
            notes.append(f"functions could not be inlined ({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}); their bodies are not checked")
        else:
            # The inliner replaces each call by its expanded body, in place and in order: walk both.
            expected = [sizes.get(_function_key(n.domain, n.op_type, n.overload), 1) for n in proto.graph.node]
            origin: list[tuple[_Label, str | None]] = []  # (top-level node, its function when a call)
            for node, label, size in zip(proto.graph.node, top, expected):
                is_call = _function_key(node.domain, node.op_type, node.overload) in functions
                origin.extend([(label, f"{node.domain}::{node.op_type}" if node.domain else node.op_type) if is_call else (label, None)] * size)
            if len(origin) != len(inlined.graph.node):
                notes.append("inlined nodes could not be mapped back to their calling nodes")
                origin = [(None, None)] * len(inlined.graph.node)
            labels = []
            for i, (node, (top_label, call_op)) in enumerate(zip(inlined.graph.node, origin)):
                match = _INLINED_NAME.match(node.name)
                if match:
                    function, body = body_labels[int(match.group(1))]
                    call = top_label.node if top_label is not None and call_op else None
                    labels.append(_Label(f"{call}/{body}" if call else body, function, call, call_op))
                else:
                    labels.append(top_label or _Label(node.name or f"#{i} {node.op_type}"))
            proto = inlined
    try:
        proto = onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False, data_prop=False)
    except Exception as e:  # noqa: BLE001 — types stay what the model declared; the rest is "unknown"
        notes.append(f"type inference failed ({type(e).__name__}); values it would have typed are reported as unknown")
    return proto.graph, labels


def _expanded_sizes(functions: dict[tuple[str, str, str], onnx.FunctionProto]) -> dict[tuple[str, str, str], int]:
    """How many graph nodes a call of each function becomes once inlined (nested calls too)."""
    sizes: dict[tuple[str, str, str], int] = {}

    def size(key, active=()):
        if key not in sizes:
            if key in active:  # recursive functions cannot be inlined; the count check catches it
                return 1
            sizes[key] = sum(
                size(k, (*active, key)) if (k := _function_key(n.domain, n.op_type, n.overload)) in functions else 1
                for n in functions[key].node
            )
        return sizes[key]

    for key in functions:
        size(key)
    return sizes


# ---- the analysis ---------------------------------------------------------------------------


def _elem_type(type_proto: onnx.TypeProto) -> int | None:
    kind = type_proto.WhichOneof("value")
    if kind in ("tensor_type", "sparse_tensor_type"):
        elem = getattr(type_proto, kind).elem_type
        return elem or None
    if kind in ("sequence_type", "optional_type"):
        return _elem_type(getattr(type_proto, kind).elem_type)
    if kind == "map_type":
        return _elem_type(type_proto.map_type.value_type)
    return None


def _types(graph: onnx.GraphProto) -> dict[str, int | None]:
    types: dict[str, int | None] = {}
    for vi in (*graph.input, *graph.value_info, *graph.output):
        elem = _elem_type(vi.type)
        if elem is not None or vi.name not in types:
            types[vi.name] = elem
    for tensor in graph.initializer:
        types[tensor.name] = tensor.data_type or None
    for sparse in graph.sparse_initializer:
        types[sparse.values.name] = sparse.values.data_type or None
    return types


def _dtype_name(elem: int | None) -> str:
    if elem is None:
        return UNKNOWN
    return _DTYPE_NAMES.get(elem) or onnx.TensorProto.DataType.Name(elem).lower()


def _is_q(node: onnx.NodeProto) -> bool:
    return node.domain in _STANDARD and node.op_type in _QUANTIZE


def _is_dq(node: onnx.NodeProto) -> bool:
    return node.domain in _STANDARD and node.op_type in _DEQUANTIZE


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    return [g for attr in node.attribute for g in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)]


def _free_names(graph: onnx.GraphProto) -> set[str]:
    """Names a subgraph reads from the enclosing scopes."""
    defined = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    defined |= {t.values.name for t in graph.sparse_initializer}
    free: set[str] = set()
    for node in graph.node:
        free.update(name for name in node.input if name and name not in defined)
        for sub in _subgraphs(node):
            free.update(name for name in _free_names(sub) if name not in defined)
        defined.update(node.output)
    return free


def _subgraph_values(graph: onnx.GraphProto):
    """(name, elem type or None) of every value a subgraph's nodes produce, nested ones too."""
    types = _types(graph)
    for node in graph.node:
        for name in node.output:
            if name:
                yield name, types.get(name)
        for sub in _subgraphs(node):
            yield from _subgraph_values(sub)


def _data_io(node: onnx.NodeProto) -> tuple[list[str], list[str]]:
    """The node's data inputs (with names its subgraphs capture) and data outputs."""
    if node.domain in _STANDARD and node.op_type in _METADATA_ONLY:
        return [], [n for n in node.output if n]  # reads the input's shape, not its values
    if _is_q(node) or _is_dq(node):
        return [n for n in node.input[:1] if n], [n for n in node.output[:1] if n]
    inputs = [n for n in node.input if n]
    for sub in _subgraphs(node):
        inputs.extend(sorted(_free_names(sub)))
    return inputs, [n for n in node.output if n]


def _float_values(node: onnx.NodeProto, ins: list[str], outs: list[str], types: dict[str, int | None],
                  unknown_counts: bool) -> list[tuple[str, str]]:
    found: dict[str, str] = {}
    for name in (*ins, *outs):
        elem = types.get(name)
        if elem in _FLOAT_TYPES or (elem is None and unknown_counts):
            found.setdefault(name, _dtype_name(elem))
    for sub in _subgraphs(node):
        for name, elem in _subgraph_values(sub):
            if elem in _FLOAT_TYPES or (elem is None and unknown_counts):
                found.setdefault(name, _dtype_name(elem))
    return list(found.items())


def _edges(io: list[tuple[list[str], list[str]]]) -> tuple[dict[str, int], dict[str, list[int]]]:
    """Value name -> the node that writes it, and -> the nodes that read it."""
    producer: dict[str, int] = {}
    consumers: dict[str, list[int]] = collections.defaultdict(list)
    for i, (ins, outs) in enumerate(io):
        for name in outs:
            producer[name] = i
        for name in ins:
            consumers[name].append(i)
    return producer, consumers


def _downstream_of_dequantizes(nodes, io, consumers) -> set[int]:
    after_dq: set[int] = set()
    stack = [name for i, n in enumerate(nodes) if _is_dq(n) for name in io[i][1]]
    while stack:
        for j in consumers.get(stack.pop(), ()):
            if j not in after_dq:
                after_dq.add(j)
                stack.extend(io[j][1])
    return after_dq


def _region(nodes, io, producer, is_entry) -> tuple[set[int], list[int]]:
    """Everything a dequantize reads, directly or not, back to the entries; and the entries reached."""
    region: set[int] = set()
    reached_entries: set[int] = set()
    stack = [name for i, n in enumerate(nodes) if _is_dq(n) for name in io[i][0]]
    while stack:
        j = producer.get(stack.pop())
        if j is None or j in region or j in reached_entries:
            continue
        if is_entry[j]:
            reached_entries.add(j)
            continue
        region.add(j)
        stack.extend(io[j][0])
    return region, sorted(reached_entries)


def _classify(nodes, io, labels, types, region, boundary) -> tuple[list[FloatOp], list[FloatOp], collections.Counter]:
    """Float ops inside the region, float ops outside it, and the functions the region calls."""
    float_ops, outside = [], []
    functions: collections.Counter = collections.Counter()
    seen_calls: set[str] = set()
    for i, node in enumerate(nodes):
        inside = i in region
        if i in boundary or node.op_type == "Constant":  # a constant is data, not an op (its readers are checked)
            continue
        values = _float_values(node, *io[i], types, unknown_counts=inside)
        label = labels[i]
        if inside and label.call and label.call not in seen_calls:
            seen_calls.add(label.call)
            functions[label.call_op] += 1
        if inside and label.opaque:
            functions[f"{node.domain}::{node.op_type}"] += 1
            values = [*values, *((name, f"{UNKNOWN} (function body not checked)") for name in io[i][1])]
        if values:
            op_type = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
            (float_ops if inside else outside).append(FloatOp(label.node, op_type, tuple(values), label.function, label.call))
    return float_ops, outside, functions


def _analyse(graph: onnx.GraphProto, labels: list[_Label], notes: list[str]) -> IntegerRegionReport:
    nodes = list(graph.node)
    io = [_data_io(n) for n in nodes]
    producer, consumers = _edges(io)
    after_dq = _downstream_of_dequantizes(nodes, io, consumers)
    # entries: quantizes with no dequantize upstream (float preprocessing ends there)
    is_entry = [_is_q(n) and i not in after_dq for i, n in enumerate(nodes)]
    region, entries = _region(nodes, io, producer, is_entry)
    exits = [i for i, n in enumerate(nodes) if _is_dq(n) and i not in region]
    float_ops, outside, functions = _classify(nodes, io, labels, _types(graph), region, set(entries) | set(exits))
    return IntegerRegionReport(
        entries=[labels[i].node for i in entries],
        exits=[labels[i].node for i in exits],
        nodes=len(region),
        float_ops=float_ops,
        outside_float_ops=outside,
        functions=dict(sorted(functions.items())),
        notes=notes,
    )
