"""Small hand-written models for the core tests (ONNX text: readable, no export step)."""

from __future__ import annotations

import onnx
import onnx.parser
import pytest

MLP_TEXT = """
<ir_version: 8, opset_import: ["" : 17]>
mlp (float[N, 4] x) => (float[N, 3] y) <float[4, 3] w = {0.1, -0.2, 0.3, 0.4, 0.5, -0.6, 0.7, 0.8, -0.9, 1.0, 1.1, 1.2}, float[3] b = {0.5, -0.5, 0.25}> {
    xi = Identity(x)
    h = MatMul(xi, w)
    y0 = Add(h, b)
    one = Constant <value = float {1.0}> ()
    y = Mul(y0, one)
}
"""


@pytest.fixture
def mlp_proto() -> onnx.ModelProto:
    return onnx.parser.parse_model(MLP_TEXT)


@pytest.fixture
def mlp_path(tmp_path, mlp_proto) -> str:
    path = tmp_path / "mlp.onnx"
    onnx.save(mlp_proto, path)
    return str(path)
