"""ONNX (onnx_ir) -> Relax, with graphopt's native kernels and a preflight.

TVM's ONNX frontend converts one op type at a time and fails on graphs real exporters make (the
legacy MiniLM export's shape arithmetic trips ``broadcast_to``). So the model is prepared first:
input shapes made static, then graphopt's ``cleanup`` (onnxscript constant folding, shape chains
folded to constants), then ``ConstantOfShape`` of a constant materialized. The frontend's converter
table is extended, for the duration of one import, with graphopt's converters: native TE kernels
for the ``pkg.graphopt`` ops, exact versions of standard integer ops, and target-specific int8
matmuls (the conversion runs inside ``with target:`` so a converter can ask for the target).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from graphopt.backends.tvm.fold import fold_static_values
from graphopt import storage
from graphopt.errors import UnsupportedError, UsageError
from graphopt.shapes import infer_shapes

__all__ = ["converters", "prepare", "preflight", "to_relax"]

# modules that export CONVERTERS: {op_type: fn(bb, inputs, attrs) -> relax.Expr}; later ones win
CONVERTER_MODULES = ("graphopt.backends.tvm.kernels", "graphopt.backends.tvm.int8")
MATERIALIZE_LIMIT = 1 << 16  # elements: a ConstantOfShape up to this size becomes an initializer


def converters() -> dict[str, Callable]:
    table: dict[str, Callable] = {}
    for name in CONVERTER_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue
        table.update(getattr(module, "CONVERTERS", {}))
    return table


def _frontend():
    from tvm.relax.frontend.onnx import onnx_frontend  # noqa: PLC0415

    return onnx_frontend


class _Converter:
    """Adapts ``fn(bb, inputs, attrs)`` to the frontend's ``OnnxOpConverter`` class interface."""

    def __init__(self, fn: Callable):
        self.fn = fn

    def get_converter(self, opset: int) -> Callable:
        return lambda bb, inputs, attrs, params: self.fn(bb, inputs, attrs)


@contextlib.contextmanager
def _extended_frontend() -> Iterator[None]:
    frontend = _frontend()
    original = frontend._get_convert_map
    ours = {op: _Converter(fn) for op, fn in converters().items()}
    frontend._get_convert_map = lambda: {**original(), **ours}
    try:
        yield
    finally:
        frontend._get_convert_map = original


def supported_ops() -> set[str]:
    with _extended_frontend():
        return set(_frontend()._get_convert_map()) | {"Constant", "If"}


def preflight(model: ir.Model) -> list[str]:
    """One line per op type the TVM importer cannot convert (empty: everything is covered)."""
    known = supported_ops()
    counts: dict[str, int] = {}
    for node in model.graph:
        if node.op_type not in known:
            key = f"{node.domain}::{node.op_type}" if node.domain else node.op_type
            counts[key] = counts.get(key, 0) + 1
    return [f"{op} ({n} node{'s' * (n > 1)}) has no TVM converter or graphopt kernel" for op, n in sorted(counts.items())]


def static_shapes(model: ir.Model, example_inputs: Mapping[str, np.ndarray] | None = None) -> dict[str, list[int]]:
    """Input name -> static shape, from ``example_inputs`` or the model's own fully known shapes."""
    shapes = {}
    for value in model.graph.inputs:
        if example_inputs is not None and value.name in example_inputs:
            shapes[value.name] = list(np.shape(example_inputs[value.name]))
        elif value.shape is not None and all(isinstance(d, int) for d in value.shape):
            shapes[value.name] = list(value.shape)
        else:
            raise UsageError(
                f"input '{value.name}' has a dynamic shape {value.shape}; TVM compiles static shapes: "
                f"give --input-shape {value.name}:d0,d1,... or calibration data"
            )
    return shapes


def prepare(model: ir.Model, shapes: Mapping[str, Sequence[int]]) -> ir.Model:
    """A copy of ``model`` with static input shapes, folded shape arithmetic and no ConstantOfShape of constants."""
    from graphopt.pipeline import run_pipeline  # noqa: PLC0415

    work = model.clone()
    for value in work.graph.inputs:
        value.shape = ir.Shape(list(shapes[value.name]))
    for node in work.graph:  # exporters' symbolic dims would shadow what the static inputs imply
        for value in node.outputs:
            if not value.is_graph_output():
                value.shape = None
    for _ in range(3):  # materializing a constant lets folding go further, and the other way round
        with _quiet("onnxscript.optimizer._constant_folding"):  # its per-node evaluation warnings are not ours to show
            run_pipeline(work, "cleanup")
        for value in work.graph.initializers.values():  # folded constants keep their exported symbolic shape
            if value.const_value is not None:
                value.shape = ir.Shape(list(value.const_value.shape))
        infer_shapes(work)
        if not (fold_static_values(work) | _materialize_constant_of_shape(work) | _resolve_expand_keep_dims(work)):
            break
    _drop_empty_resize_inputs(work)
    return work


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _materialize_constant_of_shape(model: ir.Model) -> bool:
    changed = False
    for node in list(model.graph):
        if node.op_type != "ConstantOfShape" or node.domain not in ("", "ai.onnx"):
            continue
        shape = node.inputs[0].const_value if node.inputs[0] is not None else None
        if shape is None:
            continue
        dims = [int(d) for d in shape.numpy().reshape(-1)]
        if int(np.prod(dims)) > MATERIALIZE_LIMIT:
            continue
        fill = node.attributes.get("value")
        scalar = fill.as_tensor().numpy().reshape(-1)[0] if fill is not None else np.float32(0)
        output = node.outputs[0]
        constant = ir.Value(name=output.name + "_materialized", shape=ir.Shape(dims), type=ir.TensorType(ir.DataType.from_numpy(scalar.dtype)))
        constant.const_value = ir.tensor(np.full(dims, scalar, dtype=scalar.dtype), name=constant.name)
        model.graph.register_initializer(constant)
        ir.convenience.replace_all_uses_with(output, constant)
        model.graph.remove(node, safe=True)
        changed = True
    return changed


def _drop_empty_resize_inputs(model: ir.Model) -> bool:
    """Resize(x, roi, scales=[], sizes) -> Resize(x, roi, , sizes): opset 11-12 exporters fill the unused
    ``scales`` with an empty constant; TVM's converter takes an empty ``scales`` for a given one and
    refuses it next to ``sizes``."""
    changed = False
    for node in model.graph:
        if node.op_type != "Resize" or node.domain not in ("", "ai.onnx"):
            continue
        scales = node.inputs[2] if len(node.inputs) > 3 else None  # with sizes given
        if scales is not None and scales.const_value is not None and scales.const_value.size == 0:
            node.replace_input_with(2, None)
            changed = True
    return changed


def _resolve_expand_keep_dims(model: ir.Model) -> bool:
    """Expand(x, [1, -1, 128, 128]) -> Expand(x, [1, d1, 128, 128]): the legacy exporter writes -1 for
    "keep this dim" (ONNX Runtime accepts it), TVM's broadcast needs the number."""
    changed = False
    for node in model.graph:
        if node.op_type != "Expand" or node.domain not in ("", "ai.onnx") or node.inputs[1].const_value is None:
            continue
        target = node.inputs[1].const_value.numpy().astype(np.int64).reshape(-1)
        source = node.inputs[0].shape
        if not (target < 0).any() or source is None or not all(isinstance(d, int) for d in source):
            continue
        aligned = [1] * (len(target) - len(source)) + list(source)
        resolved = np.where(target < 0, np.asarray(aligned, dtype=np.int64), target)
        value = ir.Value(name=node.inputs[1].name + "_resolved", shape=ir.Shape([len(resolved)]), type=ir.TensorType(ir.DataType.INT64))
        value.const_value = ir.tensor(resolved, name=value.name)
        model.graph.register_initializer(value)
        node.replace_input_with(1, value)
        changed = True
    return changed


def to_relax(model: ir.Model, shapes: Mapping[str, Sequence[int]], target=None):
    """The Relax IRModule of ``model`` (already ``prepare``d) for ``target`` (a tvm.target.Target)."""
    import tvm  # noqa: PLC0415

    problems = preflight(model)
    if problems:
        raise UnsupportedError(f"{len(problems)} op type(s) TVM cannot compile: " + "; ".join(problems[:5]))
    dtypes = {v.name: v.dtype.numpy().name for v in model.graph.inputs}
    proto = storage.inline_proto(model)  # external data read from the model's folder, not the cwd
    context = target if target is not None else contextlib.nullcontext()
    with _extended_frontend(), context:
        try:
            return _frontend().from_onnx(
                proto, shape_dict={k: list(v) for k, v in shapes.items()}, dtype_dict=dtypes, keep_params_in_input=False
            )
        except tvm.error.OpNotImplemented as e:
            raise UnsupportedError(f"TVM cannot import the model: {_first_line(e)}") from e
        except Exception as e:  # noqa: BLE001 — the frontend raises anything from a converter
            raise UnsupportedError(f"TVM's ONNX import failed: {_first_line(e)}") from e


def _first_line(error: Exception) -> str:
    lines = [line for line in str(error).strip().splitlines() if line.strip() and not line.startswith("#")]
    return " / ".join(lines[:2]) if lines else type(error).__name__
