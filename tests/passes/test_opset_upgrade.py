"""opset-upgrade: the default-domain opset goes up with the onnx version converter; QDQ models stop at 20."""

from __future__ import annotations

import numpy as np
import onnx.parser
import onnx_ir as ir

from graphopt import testing
from graphopt.pipeline import run_pipeline

PLAIN = """<ir_version: 8, opset_import: ["" : 14]>
g (float[2, 4] x) => (float[2, 4] y) { y = Relu (x) }"""
QDQ = """<ir_version: 8, opset_import: ["" : 18]>
g (float[2, 4] x) => (float[2, 4] y) <float s = {0.1}, int8 z = {0}> {
    q = QuantizeLinear (x, s, z)
    y = DequantizeLinear (q, s, z)
}"""


def _run(text: str, pipeline: str = "opset-upgrade"):
    original = onnx.parser.parse_model(text)
    work = ir.serde.deserialize_model(original)
    return original, work, run_pipeline(work, pipeline)[0]


def test_upgrades_to_23_and_keeps_outputs():
    original, work, record = _run(PLAIN)
    assert record.rewrites == {"opset-14-to-23": 1} and work.opset_imports[""] == 23
    testing.assert_valid(work)
    x = np.random.default_rng(testing.SEED).standard_normal((2, 4)).astype(np.float32)
    np.testing.assert_array_equal(testing.run_ort(work, {"x": x})[0], testing.run_ort(original, {"x": x})[0])


def test_a_qdq_model_stops_at_20_and_says_why():
    _, work, record = _run(QDQ)
    assert record.rewrites == {"opset-18-to-20": 1} and work.opset_imports[""] == 20
    assert any("QDQ model" in note for note in record.notes)
    _, work, record = _run(QDQ, "opset-upgrade(qdq_opset=23)")
    assert work.opset_imports[""] == 23


def test_a_newer_model_is_left_alone():
    _, work, record = _run(PLAIN.replace('"" : 14', '"" : 23'))
    assert not record.modified and work.opset_imports[""] == 23
