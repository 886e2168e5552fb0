"""graphopt ops: each declared once with its schema, numpy reference and ONNX function body,
and each backend's implementation registered beside it.

    declare_op(OpDef(
        name="DotProductAttention",
        doc="softmax(Q·Kᵀ·scale + mask)·V over the last two axes",
        reference=_attention_reference,          # the spec, in numpy
        body='''<domain: "pkg.graphopt", opset_import: ["": 18]>
                DotProductAttention <scale: float = 1.0> (Q, K, V) => (Y) { ... }''',
    ))

One module per op in this package (``graphopt/ops/<op>.py``); every module is imported on first
lookup, so adding an op is adding a file. Models that use graphopt ops carry the function
definitions (``attach_functions``), so any ONNX runtime can run them. A backend registers its
native implementation of an op with ``@implements(op_name, backend)`` in its own kernel file
(``backends/tvm/kernels/<op>.py``); ``implementations(backend)`` is the table it reads, and
``tests/core/test_ops.py`` checks that every declared op has one for every backend in
``BACKENDS``. Op names never reuse an ONNX or contrib op name: TVM's ONNX importer dispatches on
op type alone.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable

import onnx
import onnx.parser
import onnx_ir as ir

__all__ = ["BACKENDS", "DOMAIN", "OPSET_VERSION", "OpDef", "attach_functions", "declare_op", "get_op", "implementations",
           "implements", "list_ops"]

DOMAIN = "pkg.graphopt"
OPSET_VERSION = 1
# backend -> the package whose modules register its implementations (imported on first lookup)
BACKENDS = {"tvm": "graphopt.backends.tvm.kernels", "torch": "graphopt.fx.graphopt_ops"}


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


def _load_declarations() -> None:
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


def get_op(name: str) -> OpDef:
    _load_declarations()
    if name not in _OPS:
        raise KeyError(f"unknown graphopt op {name!r}; declared: {sorted(_OPS)}")
    return _OPS[name]


def list_ops() -> list[OpDef]:
    _load_declarations()
    return [_OPS[k] for k in sorted(_OPS)]


_IMPLEMENTATIONS: dict[tuple[str, str], dict[str, Callable]] = {}  # (backend, part) -> op name -> fn


def implements(op_name: str, backend: str, part: str = "convert") -> Callable[[Callable], Callable]:
    """Decorator: register ``fn`` as ``backend``'s implementation of graphopt op ``op_name``.

    For ``tvm``, part ``convert`` is the importer's converter ``fn(bb, inputs, attrs) -> relax.Expr``
    and part ``te`` the TE compute it emits (the kernel tests build it alone).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r} (known: {sorted(BACKENDS)})")

    def register(fn: Callable) -> Callable:
        table = _IMPLEMENTATIONS.setdefault((backend, part), {})
        if table.get(op_name, fn) is not fn:
            raise ValueError(f"{backend} implements graphopt op {op_name} ({part}) twice")
        table[op_name] = fn
        return fn

    return register


def implementations(backend: str, part: str = "convert") -> dict[str, Callable]:
    """Op name -> ``backend``'s implementation, after importing the backend's kernel package
    (which needs the backend's own library, e.g. TVM)."""
    importlib.import_module(BACKENDS[backend])
    return dict(_IMPLEMENTATIONS.get((backend, part), {}))


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
