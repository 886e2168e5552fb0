"""fold-static-values: shape chains and ops on constants become initializers once input shapes are static."""

from __future__ import annotations

import numpy as np
import onnx.parser
import onnx_ir as ir

from graphopt import testing
from graphopt.pipeline import run_pipeline

# A ViT-style position embedding resized to the patch grid the input's shape implies, added to x.
POSITIONS = """
<ir_version: 10, opset_import: ["" : 17]>
g (float[{dims}] x) => (float[{dims}] y) <float[1, 2, 2, 2] pos = {{1, 2, 3, 4, 5, 6, 7, 8}}, int64[1] two = {{2}}, int64[1] four = {{4}}, float[0] noroi = {{}}, float[0] noscales = {{}}> {{
    s = Shape (x)
    hw = Slice (s, two, four)
    lead = Shape <end = 2> (x)
    sizes = Concat <axis = 0> (lead, hw)
    p = Resize <mode = "nearest"> (pos, noroi, noscales, sizes)
    y = Add (x, p)
}}"""


def _run(dims: str):
    original = onnx.parser.parse_model(POSITIONS.format(dims=dims))
    work = ir.serde.deserialize_model(original)
    return original, work, run_pipeline(work, "fold-static-values,cleanup")[0]


def test_static_shapes_fold_the_chain_and_the_resize():
    original, work, record = _run("1, 2, 4, 4")
    assert record.modified and testing.op_types(work) == ["Add"]
    testing.assert_valid(work)
    x = np.random.default_rng(testing.SEED).standard_normal((1, 2, 4, 4)).astype(np.float32)
    np.testing.assert_array_equal(testing.run_ort(work, {"x": x})[0], testing.run_ort(original, {"x": x})[0])


def test_dynamic_shapes_leave_the_chain_alone():
    _, work, record = _run("1, 2, H, W")
    assert not record.modified and "Resize" in testing.op_types(work)


def test_values_above_the_limit_stay():
    original = onnx.parser.parse_model(POSITIONS.format(dims="1, 2, 4, 4"))
    work = ir.serde.deserialize_model(original)
    run_pipeline(work, "fold-static-values(limit=8)")
    resize = next(n for n in work.graph if n.op_type == "Resize")  # its 32-element result is above the limit
    assert resize.inputs[3].const_value is not None  # the 4-element sizes did fold
