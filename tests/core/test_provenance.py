"""Every node carries the pass that made it; the model says graphopt wrote it."""

from __future__ import annotations

import onnx.parser

import graphopt

GELU_OPSET_14 = """
<ir_version: 8, opset_import: ["" : 14]>
g (float[2, 8] x) => (float[2, 8] y) <float half = {0.5}, float one = {1.0}, float root2 = {1.4142135}> {
    d = Div (x, root2)
    e = Erf (d)
    p = Add (e, one)
    m = Mul (x, p)
    y = Mul (m, half)
}"""


def test_fused_nodes_carry_their_own_pass_not_the_opset_upgrade():
    proto = onnx.parser.parse_model(GELU_OPSET_14)
    proto.producer_name, proto.producer_version = "pytorch", "2.13.0"
    result = graphopt.compile(proto, passes="canonicalize", validate=False)
    (gelu,) = [n for n in result.model.graph if n.op_type == "Gelu"]
    assert gelu.metadata_props["pkg.graphopt.pass"] == "gelu"
    assert all("pkg.graphopt.pass" not in n.metadata_props for n in result.model.graph if n.op_type != "Gelu")
    assert result.model.producer_name == "graphopt" and result.model.producer_version == graphopt.__version__
    assert result.model.metadata_props["pkg.graphopt.source_producer"] == "pytorch 2.13.0"
