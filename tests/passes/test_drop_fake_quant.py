"""drop-fake-quant: a QDQ model's activation Quantize -> Dequantize pairs go; weight dequantizations stay."""

from __future__ import annotations

import numpy as np
import onnx.parser
import onnx_ir as ir

from graphopt import testing
from graphopt.pipeline import run_pipeline

HEADER = '<ir_version: 10, opset_import: ["" : 21]>'

QDQ_MATMUL = HEADER + """
g (float[2, 4] x) => (float[2, 3] y) <float s = {0.05}, int8 z = {0}, int8[4, 3] wq = {1, -2, 3, 4, 5, -6, 7, 8, -9, 10, 11, 12}, float ws = {0.1}> {
    q = QuantizeLinear (x, s, z)
    xd = DequantizeLinear (q, s, z)
    w = DequantizeLinear (wq, ws, z)
    y = MatMul (xd, w)
}"""


def _run(text: str):
    original = onnx.parser.parse_model(text)
    work = ir.serde.deserialize_model(original)
    return original, work, run_pipeline(work, "drop-fake-quant,cleanup")[0]


def test_activation_pair_goes_and_the_weight_dequantize_stays():
    original, work, record = _run(QDQ_MATMUL)
    assert record.rewrites == {"drop-fake-quant": 1}, record.declines
    assert testing.op_types(work) == ["DequantizeLinear", "MatMul"]
    testing.assert_valid(work)
    x = np.random.default_rng(testing.SEED).standard_normal((2, 4)).astype(np.float32)
    got, want = testing.run_ort(work, {"x": x})[0], testing.run_ort(original, {"x": x})[0]
    # only the activation's rounding went: at most half a step (0.025) per input, times the weights
    assert np.abs(got - want).max() <= 0.025 * np.abs(np.arange(1, 13).reshape(4, 3) * 0.1).sum(0).max() + 1e-6


def test_pairs_with_different_scales_or_other_readers_stay():
    different = QDQ_MATMUL.replace("xd = DequantizeLinear (q, s, z)", "xd = DequantizeLinear (q, ws, z)")
    _, work, record = _run(different)
    assert record.rewrites == {} and testing.op_types(work).count("QuantizeLinear") == 1
    shared = QDQ_MATMUL.replace("=> (float[2, 3] y)", "=> (float[2, 3] y, int8[2, 4] q)")
    _, work, record = _run(shared)
    assert record.rewrites == {} and testing.op_types(work).count("QuantizeLinear") == 1
