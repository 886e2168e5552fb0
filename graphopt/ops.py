"""graphopt ops: each declared once with its schema, numpy reference and ONNX function body.

    declare_op(OpDef(
        name="DotProductAttention",
        doc="softmax(Q·Kᵀ·scale + mask)·V over the last two axes",
        reference=_attention_reference,          # the spec, in numpy
        body='''<domain: "pkg.graphopt", opset_import: ["": 18]>
                DotProductAttention <scale: float = 1.0> (Q, K, V) => (Y) { ... }''',
    ))

Models that use graphopt ops carry the function definitions (``attach_functions``), so any ONNX
runtime can run them. Backends look up ``get_op(name)`` to register native kernels. Op names never
reuse an ONNX or contrib op name: TVM's ONNX importer dispatches on op type alone.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable

import onnx
import onnx.parser
import onnx_ir as ir

__all__ = ["DOMAIN", "OPSET_VERSION", "OpDef", "attach_functions", "declare_op", "get_op", "list_ops"]

DOMAIN = "pkg.graphopt"
OPSET_VERSION = 1


@dataclasses.dataclass(frozen=True)
class OpDef:
    name: str
    doc: str
    reference: Callable
    body: str  # ONNX textual function: the op's portable definition
    # (inputs, attributes) cases that exercise the op; tests check reference == body on each
    examples: Callable[[], list[tuple[tuple, dict]]] | None = None

    @property
    def function_proto(self) -> onnx.FunctionProto:
        proto = onnx.parser.parse_function(self.body)
        if proto.name != self.name or proto.domain != DOMAIN:
            raise ValueError(f"body of op {self.name} declares {proto.domain}::{proto.name}")
        proto.doc_string = self.doc
        return proto

    @property
    def attributes(self) -> dict[str, onnx.AttributeProto]:
        return {a.name: a for a in self.function_proto.attribute_proto}

    @property
    def inputs(self) -> list[str]:
        return list(self.function_proto.input)

    @property
    def outputs(self) -> list[str]:
        return list(self.function_proto.output)


_OPS: dict[str, OpDef] = {}


def declare_op(op: OpDef) -> OpDef:
    if op.name in _OPS:
        raise ValueError(f"graphopt op {op.name} is declared twice")
    if op.name in _standard_op_names():
        raise ValueError(f"graphopt op {op.name} reuses an ONNX op name")
    op.function_proto  # parse now: a broken body fails at import, not in a user's run
    _OPS[op.name] = op
    return op


def _standard_op_names() -> set[str]:
    return {s.name for s in onnx.defs.get_all_schemas_with_history()}


def get_op(name: str) -> OpDef:
    importlib.import_module("graphopt.passes")  # ops are declared next to the passes that make them
    if name not in _OPS:
        raise KeyError(f"unknown graphopt op {name!r}; declared: {sorted(_OPS)}")
    return _OPS[name]


def list_ops() -> list[OpDef]:
    importlib.import_module("graphopt.passes")
    return [_OPS[k] for k in sorted(_OPS)]


def _used_graphopt_ops(model: ir.Model) -> set[str]:
    used = set()
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.domain == DOMAIN:
            used.add(node.op_type)
    return used


def attach_functions(model: ir.Model) -> list[str]:
    """Add the function definitions of every graphopt op the model uses; return their names.

    Also imports the ``pkg.graphopt`` opset and every opset the bodies need. Functions of ops the
    model no longer uses are removed, so the saved model carries exactly what it needs.
    """
    used = _used_graphopt_ops(model)
    for key in [k for k, f in model.functions.items() if f.domain == DOMAIN and f.name not in used]:
        del model.functions[key]
    for name in sorted(used):
        proto = get_op(name).function_proto
        for opset in proto.opset_import:
            # A function must import the model's version of a domain the model also imports.
            opset.version = model.opset_imports.setdefault(opset.domain, opset.version)
        function = ir.serde.deserialize_function(proto)
        model.functions[function.identifier()] = function
    if used:
        model.opset_imports[DOMAIN] = OPSET_VERSION
    elif DOMAIN in model.opset_imports:
        del model.opset_imports[DOMAIN]
    return sorted(used)
