"""Which nodes ONNX Runtime's CPU provider cannot run, found before building a session.

A valid model can still hold ops ORT has no kernel for: an op from a custom domain without a
function body, or a standard op at an input type ORT's CPU provider does not implement (a
bfloat16 ``MatMul``). Those are exit 4 (unsupported by the backend), not exit 3 (bad model).
The answer comes from ORT's own kernel registry (``get_all_opkernel_def``), and is conservative:
a node is reported only when the registry has kernels for its op and version and none of them
accepts its known input types, or when nothing (kernel, ONNX function, model-local function)
could run it. Unknown input types are never held against a node.
"""

from __future__ import annotations

import functools

import onnx
import onnx_ir as ir

__all__ = ["unsupported_ops"]

# ORT turns Constant nodes into initializers (no kernel needed), and its always-on
# InsertCastTransformer runs float16 nodes without a float16 CPU kernel in float32.
_NO_KERNEL_NEEDED = {("", "Constant")}
_CAST_TO_FLOAT = {"tensor(float16)": "tensor(float)"}
_ORT_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft", "com.microsoft.nchwc", "ai.onnx.preview.training"}


@functools.cache
def _kernels() -> dict[tuple[str, str], list[tuple[int, int, dict[str, frozenset[str]]]]]:
    from onnxruntime.capi import _pybind_state  # noqa: PLC0415

    table: dict[tuple[str, str], list] = {}
    for kernel in _pybind_state.get_all_opkernel_def():
        if kernel.provider != "CPUExecutionProvider":
            continue
        start, end = kernel.version_range
        constraints = {name: frozenset(types) for name, types in kernel.type_constraints.items()}
        table.setdefault((kernel.domain, kernel.op_name), []).append((start, end, constraints))
    return table


def _domain(domain: str) -> str:
    return "" if domain == "ai.onnx" else domain


def _schema(op_type: str, version: int, domain: str):
    try:
        return onnx.defs.get_schema(op_type, version, domain)
    except onnx.defs.SchemaError:
        return None


def _type_string(value: ir.Value | None) -> str | None:
    if value is None or value.type is None or not isinstance(value.type, ir.TensorType) or value.dtype is None:
        return None
    try:
        return f"tensor({onnx.helper.tensor_dtype_to_string(int(value.dtype)).removeprefix('TensorProto.').lower()})"
    except (ValueError, KeyError):
        return None


def _input_constraints(node: ir.Node, schema) -> dict[str, set[str]]:
    """Type-constraint name -> the known type strings of the inputs bound to it."""
    formals = list(schema.inputs)
    bound: dict[str, set[str]] = {}
    for position, value in enumerate(node.inputs):
        if not formals:
            break
        formal = formals[min(position, len(formals) - 1)]
        if position >= len(formals) and formal.option != onnx.defs.OpSchema.FormalParameterOption.Variadic:
            break
        type_string = _type_string(value)
        type_string = _CAST_TO_FLOAT.get(type_string, type_string)
        if type_string is not None:
            bound.setdefault(formal.type_str, set()).add(type_string)
    return bound


def _problem(node: ir.Node, version: int | None, functions: set[tuple[str, str]]) -> str | None:
    domain = _domain(node.domain)
    where = f"node '{node.name}'" if node.name else "an unnamed node"
    if (node.domain, node.op_type) in functions:
        return None  # ORT inlines model-local functions; their bodies are checked as nodes
    label = f"{domain}::{node.op_type}" if domain else node.op_type
    if domain not in _ORT_DOMAINS:
        return f"{label} ({where}): domain '{domain}' is unknown to ONNX Runtime and the model has no function body for it"
    if version is None or (domain, node.op_type) in _NO_KERNEL_NEEDED:
        return None
    kernels = [k for k in _kernels().get((domain, node.op_type), []) if k[0] <= version <= k[1]]
    schema = _schema(node.op_type, version, domain)
    if not kernels:
        if _kernels().get((domain, node.op_type)) or schema is None:
            return None  # kernels exist at other versions, or ORT may know an op onnx does not: no claim
        if schema.has_function or schema.has_context_dependent_function:
            return None  # ORT expands the ONNX function body
        return f"{label} ({where}, opset {version}): ONNX Runtime's CPU provider has no kernel for this op"
    if schema is None:
        return None
    bound = _input_constraints(node, schema)
    if not bound:
        return None
    for _, _, constraints in kernels:
        if all(name not in constraints or types <= constraints[name] for name, types in bound.items()):
            return None
    if schema.has_function or schema.has_context_dependent_function:
        return None
    types = ", ".join(sorted({t.removeprefix("tensor(").removesuffix(")") for v in bound.values() for t in v}))
    return f"{label} ({where}, opset {version}): ONNX Runtime's CPU provider has no kernel for {types} inputs"


def unsupported_ops(model: ir.Model) -> list[str]:
    """One line per (op, reason) ORT's CPU provider cannot run; empty when it can run everything."""
    functions = {(f.domain, f.name) for f in model.functions.values()}
    opsets = {_domain(d): v for d, v in model.opset_imports.items()}
    problems: dict[tuple[str, str], str] = {}
    graphs = [model.graph, *model.functions.values()]
    for graph in graphs:
        own = opsets if graph is model.graph else {**opsets, **{_domain(d): v for d, v in graph.opset_imports.items()}}
        for node in ir.traversal.RecursiveGraphIterator(graph):
            version = node.version if node.version is not None else own.get(_domain(node.domain))
            problem = _problem(node, version, functions)
            if problem is not None:
                problems.setdefault((node.domain, node.op_type), problem)
    return sorted(problems.values())
