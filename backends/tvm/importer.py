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
import io
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from graphopt import storage
from graphopt.errors import UnsupportedError, UsageError

__all__ = ["converters", "prepare", "preflight", "to_relax"]

# modules that export CONVERTERS: {op_type: fn(bb, inputs, attrs) -> relax.Expr}; later ones win
CONVERTER_MODULES = ("graphopt.backends.tvm.kernels", "graphopt.backends.tvm.convert")


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


class ConversionError(Exception):
    """A converter of TVM's ONNX frontend raised on one node: which op, and what it said."""

    def __init__(self, op_type: str, error: Exception):
        super().__init__(f"{op_type}: {_first_line(error)}")
        self.op_type = op_type
        self.error = error


# the op the frontend converted last: a failure right after a converter returned (its outputs
# checked by the frontend, "Missing outputs ... in MaxPool") belongs to that op
_last_converted: list[str | None] = [None]


def _naming_convert_operator(original: Callable) -> Callable:
    """The frontend's ``_convert_operator`` that tags what a converter raises with the node's op."""

    def convert(self, op_name, inputs, attrs, opset):
        _last_converted[0] = op_name
        try:
            return original(self, op_name, inputs, attrs, opset)
        except ConversionError:
            raise
        except Exception as e:  # noqa: BLE001 — converters raise anything (KeyError, AssertionError, TVMError)
            raise ConversionError(op_name, e) from e

    return convert


def _float_extremum(x, axes: Sequence[int], keepdims: bool, largest: bool):
    """Max/min over ``axes`` starting from -inf/+inf (TVM's ``max``/``min`` start from the dtype's
    finite extreme, so a row of -inf gave -3.4e38: fully masked attention rows went wrong)."""
    from tvm import te, tirx  # noqa: PLC0415

    dtype = str(x.dtype)
    start = float("-inf") if largest else float("inf")
    combine = tirx.max if largest else tirx.min
    reducer = te.comm_reducer(lambda a, b: combine(a, b), lambda t: tirx.const(start, t), name="extremum")
    reduced = {a: te.reduce_axis((0, x.shape[a]), name=f"r{a}") for a in axes}
    kept = [d for d in range(len(x.shape)) if d not in reduced]
    shape = [1 if d in reduced else x.shape[d] for d in range(len(x.shape))] if keepdims else [x.shape[d] for d in kept]

    def body(*index):
        source = []
        for d in range(len(x.shape)):
            if d in reduced:
                source.append(reduced[d])
            else:
                source.append(index[d] if keepdims else index[kept.index(d)])
        return reducer(x(*source), axis=list(reduced.values()))

    return te.compute(shape, body, name="extremum", tag=dtype)


class _InfiniteExtremum:
    """ReduceMax/ReduceMin on floats with constant axes as ``_float_extremum``; anything else goes
    to TVM's own converter."""

    def __init__(self, original, largest: bool):
        self.original, self.largest = original, largest

    def get_converter(self, opset: int) -> Callable:
        fallback = self.original.get_converter(opset)

        def convert(bb, inputs, attrs, params):
            import tvm  # noqa: PLC0415

            x = inputs[0]
            dtype = x.ty.dtype if hasattr(x.ty, "dtype") else ""
            rank = len(x.ty.shape) if getattr(x.ty, "shape", None) is not None else None
            axes = attrs.get("axes")
            if len(inputs) > 1 and inputs[1] is not None:
                if not isinstance(inputs[1], tvm.ir.GenericConst):
                    return fallback(bb, inputs, attrs, params)
                axes = inputs[1].value.numpy().reshape(-1).tolist()
            if not str(dtype).startswith(("float", "bfloat")) or rank is None:
                return fallback(bb, inputs, attrs, params)
            if not axes:
                if attrs.get("noop_with_empty_axes", 0):
                    return x
                axes = list(range(rank))
            axes = sorted({int(a) % rank for a in axes}) if rank else []
            return bb.emit_te(_float_extremum, x, axes, bool(attrs.get("keepdims", 1)), self.largest,
                              primfunc_name_hint="graphopt_reduce_" + ("max" if self.largest else "min"))

        return convert


@contextlib.contextmanager
def _extended_frontend() -> Iterator[None]:
    frontend = _frontend()
    original = frontend._get_convert_map
    original_convert = frontend.ONNXGraphImporter._convert_operator
    tvm_map = original()
    ours = {op: _InfiniteExtremum(tvm_map[op], op == "ReduceMax") for op in ("ReduceMax", "ReduceMin") if op in tvm_map}
    ours.update({op: _Converter(fn) for op, fn in converters().items()})
    frontend._get_convert_map = lambda: {**original(), **ours}
    frontend.ONNXGraphImporter._convert_operator = _naming_convert_operator(original_convert)
    try:
        yield
    finally:
        frontend._get_convert_map = original
        frontend.ONNXGraphImporter._convert_operator = original_convert


def supported_ops() -> set[str]:
    with _extended_frontend():
        return set(_frontend()._get_convert_map()) | {"Constant", "If"}


def preflight(model: ir.Model) -> list[str]:
    """One line per problem that stops the TVM import, each naming the op (empty: the model imports).

    Three checks, cheapest first: op types without a converter; op forms known to go wrong
    (``unsupported_forms``); then, when the model's input shapes are static, a trial import, so a
    form the frontend refuses (an input it needs constant, an attribute it lacks) is refused here
    with the op named instead of failing later.
    """
    problems = _missing_converters(model) or unsupported_forms(model, prepared=False)
    if problems or not _static_inputs(model):
        return problems
    return _trial_import(model)  # prepares the model: the checks on run-time values apply there


def unsupported_forms(model: ir.Model, prepared: bool = True) -> list[str]:
    """Op forms the TVM path would compile into wrong results or crash on, one line each, op named.

    ``prepared=False`` (a model before ``prepare``) skips the checks on values that only fold to
    constants once the input shapes are static (an Expand's target shape from Shape/Concat): the
    legacy exporters' attention masks are such values, and ``to_relax`` checks them after folding.
    """
    problems = []
    for node in model.graph:
        if not prepared and node.op_type in FOLDED_BY_PREPARE:
            continue
        reason = _non_tensor_value(node) or _form_problem(node)
        if reason:
            problems.append(f"{node.op_type}: {reason}")
    return list(dict.fromkeys(problems))


def _non_tensor_value(node: ir.Node) -> str | None:
    """Sequences, optionals and strings: TVM compiles numeric tensors only."""
    for value in [*node.inputs, *node.outputs]:
        if value is None or value.type is None:
            continue
        if not isinstance(value.type, ir.TensorType):
            return f"'{value.name}' is a {type(value.type).__name__}; TVM compiles tensors only"
        if value.type.dtype == ir.DataType.STRING:
            return f"'{value.name}' is a string tensor; TVM compiles numeric tensors only"
    return None


def _form_problem(node: ir.Node) -> str | None:
    check = FORM_CHECKS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
    return check(node) if check is not None else None


def _used(value: ir.Value | None) -> bool:
    return value is not None and (value.is_graph_output() or bool(value.uses()))


def _layer_norm_statistics(node: ir.Node) -> str | None:
    if any(_used(v) for v in node.outputs[1:]):
        return "TVM's converter returns zeros for the Mean / InvStdDev outputs (only Y is computed)"
    return None


def _batch_norm_training(node: ir.Node) -> str | None:
    if node.attributes.get_int("training_mode", 0):
        return "training_mode=1 is not implemented by TVM's converter (it normalizes with the given running statistics)"
    return None


def _is_inf_one_sided(node: ir.Node) -> str | None:
    if not (node.attributes.get_int("detect_positive", 1) and node.attributes.get_int("detect_negative", 1)):
        return "TVM's converter ignores detect_positive/detect_negative (it flags both infinities)"
    return None


def _space_to_depth_crd(node: ir.Node) -> str | None:
    if node.attributes.get_string("mode", "DCR") != "DCR":
        return "mode=CRD is ignored by TVM's converter (it always permutes as DCR)"
    return None


def _conv_transpose_output_shape(node: ir.Node) -> str | None:
    if "output_shape" in node.attributes:
        return "the output_shape attribute is ignored by TVM's converter (the output comes out smaller)"
    return None


def _bit_shift_amount(node: ir.Node) -> str | None:
    """ONNX wants 0 for shifts by >= the bit width or by a negative amount; LLVM's shift is undefined there."""
    amount = node.inputs[1].const_value if len(node.inputs) > 1 and node.inputs[1] is not None else None
    bits = int(node.inputs[0].dtype.itemsize * 8) if node.inputs[0].dtype is not None else 64
    if amount is None:
        return f"a non-constant shift amount may be >= {bits} or negative, where TVM's shift is undefined (ONNX: 0)"
    values = amount.numpy().astype(np.int64)
    if values.size and (values.min() < 0 or values.max() >= bits):
        return f"shift amounts outside [0, {bits}) are undefined in TVM's shift (ONNX: 0)"
    return None


def _non_constant_input(index: int, why: str) -> Callable[[ir.Node], str | None]:
    def check(node: ir.Node) -> str | None:
        value = node.inputs[index] if len(node.inputs) > index else None
        return why if value is not None and value.const_value is None else None

    return check


def _float_floor_mod(node: ir.Node) -> str | None:
    dtype = node.inputs[0].dtype
    if not node.attributes.get_int("fmod", 0) and dtype is not None and dtype.is_floating_point():
        return "a floating-point Mod with fmod=0 (invalid ONNX: floats need fmod=1) gives NaN in TVM for an infinite divisor"
    return None


def _integer_pow(node: ir.Node) -> str | None:
    dtype = node.inputs[0].dtype
    if dtype is not None and not dtype.is_floating_point():
        return f"TVM's power applies to floating-point bases only (base is {dtype.name})"
    return None


def _max_pool_indices(node: ir.Node) -> str | None:
    if len(node.outputs) > 1 and _used(node.outputs[1]):
        return "the Indices output is not produced by TVM's converter"
    return None


def _rms_norm_every_axis(node: ir.Node) -> str | None:
    shape = node.inputs[0].shape
    axis = node.attributes.get_int("axis", -1)
    if shape is not None and (axis == 0 or axis == -len(shape)):
        return "TVM's rms_norm fails to build when it normalizes over every axis (axis 0)"
    return None


# op type -> fn(node) -> why TVM gets this form wrong (None: fine); each one a measured defect of
# TVM's frontend or lowering on the ONNX backend node tests (docs/tvm-conformance.md)
FORM_CHECKS: dict[str, Callable[[ir.Node], str | None]] = {
    "LayerNormalization": _layer_norm_statistics,
    "BatchNormalization": _batch_norm_training,
    "IsInf": _is_inf_one_sided,
    "SpaceToDepth": _space_to_depth_crd,
    "ConvTranspose": _conv_transpose_output_shape,
    "BitShift": _bit_shift_amount,
    "Mod": _float_floor_mod,
    "Pow": _integer_pow,
    "MaxPool": _max_pool_indices,
    "RMSNormalization": _rms_norm_every_axis,
    # TVM maps "Attention" to com.microsoft's Attention (input @ packed QKV weight, num_heads): the
    # ONNX opset-23 Attention(Q, K, V) means something else
    "Attention": lambda node: "TVM's converter implements com.microsoft's Attention, not ONNX's Attention(Q, K, V) (opset 23)",
    "NonMaxSuppression": lambda node: "TVM's converter selects the wrong boxes (0 instead of 1 on the ONNX single-box case) or fails to build",
    "Expand": _non_constant_input(1, "a target shape known only at run time gives a wrong output shape in TVM (2x1x6 for 2x3x6)"),
    "ConstantOfShape": _non_constant_input(0, "an output shape known only at run time cannot be compiled (CodeGenVM cannot emit it)"),
}


# ops whose FORM_CHECKS entry asks for a constant input that ``prepare`` may still fold into one
FOLDED_BY_PREPARE = {"Expand", "ConstantOfShape"}


def _missing_converters(model: ir.Model) -> list[str]:
    known = supported_ops()
    counts: dict[str, int] = {}
    for node in model.graph:
        if node.op_type not in known:
            key = f"{node.domain}::{node.op_type}" if node.domain else node.op_type
            counts[key] = counts.get(key, 0) + 1
    return [f"{op} ({n} node{'s' * (n > 1)}) has no TVM converter or graphopt kernel" for op, n in sorted(counts.items())]


def _static_inputs(model: ir.Model) -> bool:
    return all(v.shape is not None and all(isinstance(d, int) for d in v.shape) for v in model.graph.inputs)


def _trial_import(model: ir.Model) -> list[str]:
    shapes = static_shapes(model)
    prepared, _ = prepare(model, shapes)
    problems = _missing_converters(prepared) or unsupported_forms(prepared)  # lines that name the op
    if problems:
        return problems
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the frontend prints every failed node's inputs
            to_relax(prepared, shapes)
    except UnsupportedError as e:
        cause = e.__cause__
        if isinstance(cause, ConversionError):
            return [f"{cause.op_type}: TVM's ONNX converter cannot import this form ({_first_line(cause.error)})"]
        return [str(e)]
    return []


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


# Constants folded before import may be as large as weights: an int8 weight made at run time from a
# constant (Cast(Clip(round(W / s))) of GPT-2's tied, transposed 50,257 x 768 embedding) must reach
# TVM as a constant, or its matmul packs 38 M weights on every call (222 ms instead of ~30).
PREPARE_FOLD_LIMIT = 1 << 28


# The preparation, as registered passes: shapes pinned, then folding until nothing more folds (a
# materialized constant lets folding go further, and the other way round), then TVM's import forms.
FOLDING = (f"cleanup(fold_limit={PREPARE_FOLD_LIMIT}),fold-static-values,materialize-constant-of-shape,"
           "resolve-expand-keep-dims")
FOLDING_ROUNDS = 3


def prepare(model: ir.Model, shapes: Mapping[str, Sequence[int]]) -> tuple[ir.Model, list]:
    """A copy of ``model`` ready for TVM's frontend, and the records of the passes that made it.

    Every step is a registered pass (``graphopt passes``, category "backend") run by the pipeline,
    so each node it makes carries its provenance and the report lists what each did.
    """
    from graphopt.passes.static_shapes import format_shapes  # noqa: PLC0415
    from graphopt.pipeline import run_pipeline  # noqa: PLC0415

    work = model.clone()
    with _quiet("onnxscript.optimizer._constant_folding"):  # its per-node evaluation warnings are not ours to show
        records = run_pipeline(work, f'static-shapes(shapes="{format_shapes(shapes)}")')
        # int8 weights read by thresholded inputs -> the int8 sparse kernels, before the folding makes
        # weight-only int8 float32 (Cast+Mul; DequantizeLinear up to 65536 elements); the second run: float
        records += run_pipeline(work, "sparse-linear")
        for _ in range(FOLDING_ROUNDS):
            folding = run_pipeline(work, FOLDING)
            records += folding
            if not any(record.modified for record in folding[1:]):  # only cleanup changed: nothing new to fold
                break
        records += run_pipeline(work, "sparse-linear")  # thresholded linear layers -> the sparse kernels
        records += run_pipeline(work, "tvm-import-forms")
    return work, records


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def to_relax(model: ir.Model, shapes: Mapping[str, Sequence[int]], target=None):
    """The Relax IRModule of ``model`` (already ``prepare``d) for ``target`` (a tvm.target.Target)."""
    import tvm  # noqa: PLC0415

    problems = _missing_converters(model) or unsupported_forms(model)  # not the trial import: that is this
    if problems:
        raise UnsupportedError(f"{len(problems)} op type(s) TVM cannot compile: " + "; ".join(problems[:5]))
    dtypes = {v.name: v.dtype.numpy().name for v in model.graph.inputs}
    proto = storage.inline_proto(model)  # external data read from the model's folder, not the cwd
    context = target if target is not None else contextlib.nullcontext()
    _last_converted[0] = None
    with _extended_frontend(), context:
        try:
            return _frontend().from_onnx(
                proto, shape_dict={k: list(v) for k, v in shapes.items()}, dtype_dict=dtypes, keep_params_in_input=False
            )
        except tvm.error.OpNotImplemented as e:
            raise UnsupportedError(f"TVM cannot import the model: {_first_line(e)}") from e
        except ConversionError as e:
            raise UnsupportedError(f"TVM's ONNX import failed at {e}") from e
        except Exception as e:  # noqa: BLE001 — the frontend raises anything from a converter
            if _last_converted[0] is not None:
                tagged = ConversionError(_last_converted[0], e)
                raise UnsupportedError(f"TVM's ONNX import failed at {tagged}") from tagged
            raise UnsupportedError(f"TVM's ONNX import failed: {_first_line(e)}") from e


def _first_line(error: Exception) -> str:
    lines = [line for line in str(error).strip().splitlines() if line.strip() and not line.startswith("#")]
    return " / ".join(lines[:2]) if lines else type(error).__name__
