"""A pass object is an onnx_ir pass: running it again reports that run alone."""

from __future__ import annotations

import onnx.parser
import onnx_ir as ir

from graphopt.pass_base import GraphoptPass
from graphopt.passes.gelu import GeluPass

GELU = """
<ir_version: 10, opset_import: ["" : 20]>
g (float[2, 8] x) => (float[2, 8] y) <float half = {0.5}, float one = {1.0}, float root2 = {1.4142135}> {
    d = Div (x, root2)
    e = Erf (d)
    p = Add (e, one)
    m = Mul (x, p)
    y = Mul (m, half)
}"""


def test_a_pass_object_run_twice_counts_each_run_alone():
    the_pass = GeluPass()
    first, second = ir.serde.deserialize_model(onnx.parser.parse_model(GELU)), ir.serde.deserialize_model(onnx.parser.parse_model(GELU))
    assert the_pass(first).modified and dict(the_pass.rewrites) == {"gelu-erf": 1}
    assert the_pass(second).modified and dict(the_pass.rewrites) == {"gelu-erf": 1}  # not 2
    assert not the_pass(second).modified and dict(the_pass.rewrites) == {}


def test_a_pass_class_is_named_after_its_cli_name():
    import pytest  # noqa: PLC0415

    from graphopt import registry  # noqa: PLC0415

    class FuseThing(GraphoptPass):
        """A misnamed pass."""

    with pytest.raises(ValueError, match="name it <thing-fusion in CamelCase>Pass"):
        registry.register_pass("thing-fusion")(FuseThing)
    assert "thing-fusion" not in registry._PASSES
    for spec in registry.list_passes():
        assert spec.cls.__name__.lower() == spec.name.replace("-", "") + "pass"
