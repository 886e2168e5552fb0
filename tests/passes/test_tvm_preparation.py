"""The TVM backend's preparation as registered passes: static-shapes, materialize-constant-of-shape,
resolve-expand-keep-dims and tvm-import-forms. Each: golden structure, a case where it does not
fire (with the reason), outputs equal to the original's on ONNX Runtime, and the full checker."""

from __future__ import annotations

import numpy as np
import onnx.parser
import onnx_ir as ir
import pytest

from graphopt import registry, testing
from graphopt.errors import UsageError
from graphopt.pipeline import run_pipeline


def _load(text: str) -> tuple[onnx.ModelProto, ir.Model]:
    original = onnx.parser.parse_model(text)
    return original, ir.serde.deserialize_model(original)


def _same_outputs(original: onnx.ModelProto, work: ir.Model, feeds: dict) -> None:
    testing.assert_valid(work)
    for got, want in zip(testing.run_ort(work, feeds), testing.run_ort(original, feeds)):
        np.testing.assert_array_equal(got, want)


def _x(*shape: int, dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(testing.SEED).standard_normal(shape).astype(dtype)


def test_every_preparation_step_is_a_registered_backend_pass():
    backend = {spec.name for spec in registry.list_passes() if spec.category == "backend"}
    assert {"static-shapes", "materialize-constant-of-shape", "resolve-expand-keep-dims", "tvm-import-forms"} <= backend


# -- static-shapes ------------------------------------------------------------------------------

SYMBOLIC = """
<ir_version: 10, opset_import: ["" : 18]>
g (float[batch, seq] x) => (float[batch, seq] y) {
    r = Relu (x)
    y = Neg (r)
}"""


def test_static_shapes_pins_inputs_and_forgets_symbolic_intermediates():
    original, work = _load(SYMBOLIC)
    work.graph.node(0).outputs[0].shape = ir.Shape(["batch", "seq"])
    record = run_pipeline(work, 'static-shapes(shapes="x:2,3")')[0]
    assert record.modified and record.rewrites == {"inputs-pinned": 1}
    assert list(work.graph.inputs[0].shape) == [2, 3]
    assert list(work.graph.node(0).outputs[0].shape) == [2, 3]  # re-inferred from the static input, not "batch"
    _same_outputs(original, work, {"x": _x(2, 3)})


def test_static_shapes_without_sizes_notes_the_dynamic_input():
    _, work = _load(SYMBOLIC)
    record = run_pipeline(work, "static-shapes")[0]
    assert record.rewrites == {} and "input 'x' keeps its dynamic shape" in record.notes[0]


@pytest.mark.parametrize(("shapes", "message"), [("y:2,3", "model's inputs are"), ("x:2", "rank 1 given"), ("x:-1,3", "non-negative"),
                                                   ("x2,3", "bad static-shapes entry")])
def test_static_shapes_bad_sizes_are_usage_errors(shapes, message):
    _, work = _load(SYMBOLIC)
    with pytest.raises(UsageError, match=message):
        run_pipeline(work, f'static-shapes(shapes="{shapes}")')


# -- materialize-constant-of-shape --------------------------------------------------------------

FILLED = """
<ir_version: 10, opset_import: ["" : 18]>
g (float[2, 3] x) => (float[2, 3] y) <int64[2] dims = {{2, 3}}> {{
    c = ConstantOfShape <value = float[1] {{{fill}}}> (dims)
    y = Add (x, c)
}}"""


def test_constant_of_shape_of_a_constant_becomes_its_value():
    original, work = _load(FILLED.format(fill="1.5"))
    record = run_pipeline(work, "materialize-constant-of-shape")[0]
    assert record.rewrites == {"materialize-constant-of-shape": 1} and testing.op_types(work) == ["Add"]
    _same_outputs(original, work, {"x": _x(2, 3)})


def test_constant_of_shape_above_the_limit_is_declined_with_the_size():
    _, work = _load(FILLED.format(fill="1.5"))
    record = run_pipeline(work, "materialize-constant-of-shape(limit=4)")[0]
    assert not record.modified and any("6 elements > limit 4" in d for d in record.declines)


# -- resolve-expand-keep-dims -------------------------------------------------------------------

KEEP_DIMS = """
<ir_version: 10, opset_import: ["" : 18]>
g (float[{dims}] x) => (float[1, 2, 3, 3] y) <int64[4] target = {{1, -1, 3, 3}}> {{
    y = Expand (x, target)
}}"""


def test_expand_keep_dims_gets_the_number():
    _, work = _load(KEEP_DIMS.format(dims="2, 1, 3"))
    record = run_pipeline(work, "resolve-expand-keep-dims")[0]
    assert record.rewrites == {"resolve-expand-keep-dims": 1}
    assert work.graph.node(0).inputs[1].const_value.numpy().tolist() == [1, 2, 3, 3]
    testing.assert_valid(work)
    x = _x(2, 1, 3)  # ONNX Runtime refuses the -1 form when it knows x's shape: numpy says what it means
    np.testing.assert_array_equal(testing.run_ort(work, {"x": x})[0], np.broadcast_to(x, (1, 2, 3, 3)))


def test_expand_of_a_dynamic_input_is_declined():
    _, work = _load(KEEP_DIMS.format(dims="n, 1, 3"))
    record = run_pipeline(work, "resolve-expand-keep-dims")[0]
    assert not record.modified and any("not static" in d for d in record.declines)


# -- tvm-import-forms ---------------------------------------------------------------------------

RESIZE = """
<ir_version: 10, opset_import: ["" : 13]>
g (float[1, 1, 2, 2] x) => (float[1, 1, 4, 4] y) <float[0] roi = {{}}, float[{n}] scales = {{{scales}}}, int64[4] sizes = {{1, 1, 4, 4}}> {{
    y = Resize <mode = "nearest"> (x, roi, scales, sizes)
}}"""

CONSTANT_LIST = """
<ir_version: 10, opset_import: ["" : 18]>
g (float[2, 3] x) => (float[3, 2] y) {
    s = Constant <value_ints = [3, 2]> ()
    y = Reshape (x, s)
}"""

HALF_MATMUL = """
<ir_version: 10, opset_import: ["" : 18]>
g (float16[2, 64] a, float16[64, 3] b) => (float16[2, 3] y) {
    y = MatMul (a, b)
}"""


def test_empty_resize_scales_are_dropped_and_attributes_kept():
    original, work = _load(RESIZE.format(n=0, scales=""))
    record = run_pipeline(work, "tvm-import-forms")[0]
    assert record.rewrites == {"resize-drop-empty-scales": 1}
    resize = next(n for n in work.graph if n.op_type == "Resize")
    assert resize.inputs[2] is None and resize.attributes["mode"].value == "nearest"
    _same_outputs(original, work, {"x": _x(1, 1, 2, 2)})


def test_resize_with_real_scales_is_declined():
    text = RESIZE.format(n=4, scales="1, 1, 2, 2").replace(", int64[4] sizes = {1, 1, 4, 4}", ", int64[0] sizes = {}")
    _, work = _load(text)
    record = run_pipeline(work, "tvm-import-forms")[0]
    assert not record.modified and any("scales is not an empty constant" in d for d in record.declines)


def test_list_valued_constant_becomes_a_tensor_constant():
    original, work = _load(CONSTANT_LIST)
    record = run_pipeline(work, "tvm-import-forms")[0]
    assert record.rewrites == {"constant-list-as-tensor": 1}
    constant = next(n for n in work.graph if n.op_type == "Constant")
    assert list(constant.attributes) == ["value"]
    _same_outputs(original, work, {"x": _x(2, 3)})


def test_float16_matmul_is_computed_in_float32_and_cast_once():
    original, work = _load(HALF_MATMUL)
    record = run_pipeline(work, "tvm-import-forms")[0]
    assert record.rewrites == {"widen-half-matmul": 1}
    assert testing.op_types(work) == ["Cast", "Cast", "MatMul", "Cast"]
    testing.assert_valid(work)
    feeds = {"a": _x(2, 64, dtype=np.float16), "b": _x(64, 3, dtype=np.float16)}
    exact = (feeds["a"].astype(np.float64) @ feeds["b"].astype(np.float64)).astype(np.float16)
    got = testing.run_ort(work, feeds)[0]
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float32), exact.astype(np.float32), rtol=1e-3, atol=1e-3)


def test_float32_matmul_is_declined_with_its_dtype():
    _, work = _load(HALF_MATMUL.replace("float16", "float"))
    record = run_pipeline(work, "tvm-import-forms")[0]
    assert not record.modified and any("not float16/bfloat16" in d for d in record.declines)


def test_preparation_stamps_provenance_on_what_it_makes():
    from graphopt.backends.tvm import importer  # noqa: PLC0415
    from graphopt.pipeline import PROVENANCE_PASS  # noqa: PLC0415

    _, work = _load(HALF_MATMUL)
    prepared, records = importer.prepare(work, {"a": [2, 64], "b": [64, 3]})
    assert {n.metadata_props.get(PROVENANCE_PASS) for n in prepared.graph} == {"tvm-import-forms"}
    assert "tvm-import-forms" in [r.name for r in records if r.modified]


def test_static_shapes_takes_an_empty_dimension():
    """Real inputs can be empty (an ``axes`` input of shape [0]): the backend's sizes come from them."""
    _, work = _load(SYMBOLIC)
    record = run_pipeline(work, 'static-shapes(shapes="x:0,3")')[0]
    assert record.modified and list(work.graph.inputs[0].shape) == [0, 3]

