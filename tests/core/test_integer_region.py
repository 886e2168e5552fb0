"""The integer-only verifier: the region between QuantizeLinear and DequantizeLinear, its float ops.

Small hand-written models (ONNX text), the real Shiftmax island, the CLI (`inspect
--integer-only`, `compile --integer-only`) in subprocesses, and `graphopt.compile(integer_only=)`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir
import pytest

import graphopt
from graphopt import api, integer_region, testing
from graphopt.errors import CheckFailedError
from graphopt.pipeline import parse_pipeline, run_pipeline

HEADER = '<ir_version: 10, opset_import: ["" : 21{extra}]>'
SCALES = "float s = {0.05}, int8 z = {0}, float so = {0.05}, int32 zo = {0}"

CLEAN = HEADER.format(extra="") + f"""
g (float[2, 8] x) => (float[2, 8] y) <{SCALES}, int32 two = {{2}}> {{
    q = QuantizeLinear(x, s, z)
    c = Cast <to = 6> (q)
    m = Mul(c, two)
    a = Add(m, c)
    y = DequantizeLinear(a, so, zo)
}}
"""

# a float round trip inside the region: dequantize, Relu and Mul in float, quantize again
FLOAT_INSIDE = HEADER.format(extra="") + f"""
g (float[2, 8] x) => (float[2, 8] y) <{SCALES}, float three = {{3.0}}> {{
    q = QuantizeLinear(x, s, z)
    c = Cast <to = 6> (q)
    d = DequantizeLinear(c, so, zo)
    r = Relu(d)
    f = Mul(r, three)
    q2 = QuantizeLinear(f, s, z)
    c2 = Cast <to = 6> (q2)
    y = DequantizeLinear(c2, so, zo)
}}
"""

# an attention-mask-like float preprocessing before the quantize, float pooling after the dequantize
FLOAT_OUTSIDE = HEADER.format(extra="") + f"""
g (float[2, 8] mask) => (float[2] y) <{SCALES}, float one = {{1.0}}, float big = {{-10000.0}}> {{
    inv = Sub(one, mask)
    fill = Mul(inv, big)
    q = QuantizeLinear(fill, s, z)
    c = Cast <to = 6> (q)
    n = Neg(c)
    d = DequantizeLinear(n, so, zo)
    y = ReduceMean <keepdims = 0> (d)
}}
"""

FUNCTION_WITH_FLOAT = HEADER.format(extra=', "pkg.graphopt" : 1') + f"""
g (float[2, 8] x) => (float[2, 8] y) <{SCALES}> {{
    q = QuantizeLinear(x, s, z)
    c = Cast <to = 6> (q)
    f = pkg.graphopt.TestFloatBody(c)
    y = DequantizeLinear(f, so, zo)
}}
<domain: "pkg.graphopt", opset_import: ["" : 21]>
TestFloatBody (X) => (Y) {{
    xf = Cast <to = 1> (X)
    half = Constant <value = float {{0.5}}> ()
    h = Mul(xf, half)
    hf = Floor(h)
    Y = Cast <to = 6> (hf)
}}
"""

UNDECLARED_OP = HEADER.format(extra=', "pkg.graphopt" : 1') + f"""
g (float[2, 8] x) => (float[2, 8] y) <{SCALES}> {{
    q = QuantizeLinear(x, s, z)
    c = Cast <to = 6> (q)
    f = pkg.graphopt.NoSuchGraphoptOp(c)
    y = DequantizeLinear(f, so, zo)
}}
"""

NO_QDQ = HEADER.format(extra="") + """
g (float[2, 8] x) => (float[2, 8] y) {
    r = Relu(x)
    y = Neg(r)
}
"""


def verify(text: str) -> integer_region.IntegerRegionReport:
    return integer_region.verify(ir.serde.deserialize_model(onnx.parser.parse_model(text)))


def named(text: str) -> onnx.ModelProto:
    """The model with node names (q, c, ...: each node's first output) so reports are readable."""
    proto = onnx.parser.parse_model(text)
    for node in proto.graph.node:
        node.name = node.output[0]
    return proto


def test_clean_region():
    report = integer_region.verify(ir.serde.deserialize_model(named(CLEAN)))
    assert report.ok and report.float_ops == [] and report.outside_float_ops == []
    assert (report.entries, report.exits, report.nodes) == (["q"], ["y"], 3)
    assert report.lines() == ["integer-only: 3 nodes between 1 entries and 1 exits, no float op"]
    assert report.as_dict()["ok"] is True


def test_float_round_trip_inside_the_region_is_reported():
    report = integer_region.verify(ir.serde.deserialize_model(named(FLOAT_INSIDE)))
    assert not report.ok and report.has_region
    assert (report.entries, report.exits, report.nodes) == (["q"], ["y"], 6)
    found = {op.node: op for op in report.float_ops}
    assert list(found) == ["d", "r", "f", "q2"]  # the inner dequantize/quantize pair counts too
    assert found["r"].op_type == "Relu" and found["r"].values == (("d", "float32"), ("r", "float32"))
    assert found["f"].op_type == "Mul" and ("three", "float32") in found["f"].values
    assert found["q2"].values == (("f", "float32"),)  # the scale and zero point are not region values
    assert found["r"].function is None
    lines = report.lines()
    assert lines[1] == "float op: node 'r' (Relu): d float32, r float32"
    assert lines[-1].startswith("integer-only: 4 float ops in the integer region (6 nodes between 1 entries and 1 exits)")


def test_float_before_the_quantize_is_outside():
    report = integer_region.verify(ir.serde.deserialize_model(named(FLOAT_OUTSIDE)))
    assert report.ok and report.nodes == 2 and report.float_ops == []
    assert [(op.node, op.op_type) for op in report.outside_float_ops] == [("inv", "Sub"), ("fill", "Mul"), ("y", "ReduceMean")]
    assert report.as_dict()["outside_float_ops"][0]["values"][0] == {"name": "one", "dtype": "float32"}


INTEGER_INPUT = """<ir_version: 10, opset_import: ["" : 21]>
g (int64[2, 5] ids, float[2, 5] mask) => (float[2, 5, 4] y) <int32[7, 4] table = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27}, float s = {0.5}, int16 z = {0}, int32 lo = {-128}, int32 hi = {127}> {
    e = Gather <axis = 0> (table, ids)
    big = Mul (mask, s)
    mq = QuantizeLinear (big, s, z)
    m32 = Cast <to = 6> (mq)
    mu = Unsqueeze (m32, axes)
    axes = Constant <value_ints = [-1]> ()
    sum = Add (e, mu)
    c = Clip (sum, lo, hi)
    y = DequantizeLinear (c, s)
}"""


def test_integer_inputs_start_the_region_without_a_quantize():
    """Token ids (integer inputs) feed integer ops directly; only the float mask is quantized."""
    proto = named(INTEGER_INPUT.replace("    mu = Unsqueeze (m32, axes)\n    axes = Constant <value_ints = [-1]> ()",
                                        "    axes = Constant <value_ints = [-1]> ()\n    mu = Unsqueeze (m32, axes)"))
    report = integer_region.verify(ir.serde.deserialize_model(proto))
    assert report.ok, report.lines()
    assert (report.entries, report.exits) == (["mq"], ["y"])
    assert [op.node for op in report.outside_float_ops] == ["big"]  # the mask's float work, before its entry


def test_float_inside_a_graphopt_function_body_is_found_by_inlining():
    proto = named(FUNCTION_WITH_FLOAT)
    proto.graph.node[2].name = "my_call"
    model = ir.serde.deserialize_model(proto)
    report = integer_region.verify(model)
    assert not report.ok and report.functions == {"pkg.graphopt::TestFloatBody": 1}
    assert len(model.graph) == 4 and len(model.functions) == 1  # the model itself is untouched
    ops = {op.op_type: op for op in report.float_ops}
    assert set(ops) == {"Cast", "Mul", "Floor"}
    mul = ops["Mul"]
    assert mul.function == "pkg.graphopt::TestFloatBody" and mul.call == "my_call"
    assert mul.node == "my_call/TestFloatBody/Mul_2"
    assert all(dtype == "float32" for _, dtype in mul.values)
    assert "in pkg.graphopt::TestFloatBody called by 'my_call'" in str(mul)


def test_undeclared_op_without_body_is_unknown_not_passed():
    report = verify(UNDECLARED_OP)
    assert not report.ok
    assert [(op.op_type, op.values) for op in report.float_ops] == [("pkg.graphopt::NoSuchGraphoptOp", (("f", "unknown type"),))]
    assert "with values of unknown type" in report.summary()


def test_no_integer_region():
    report = verify(NO_QDQ)
    assert not report.has_region and not report.ok and report.nodes == 0
    assert report.summary() == "integer-only: no integer region: no DequantizeLinear reads a computed integer value (2 float ops)"


def test_the_shiftmax_island_is_integer_only():
    text = '<ir_version: 10, opset_import: ["" : 23]>\ng (float[2, 4, 16] x) => (float[2, 4, 16] y) {\n y = Softmax(x)\n}'
    model = ir.serde.deserialize_model(onnx.parser.parse_model(text))
    rng = np.random.default_rng(testing.SEED)
    run_pipeline(model, "shiftmax", samples=[{"x": rng.standard_normal((2, 4, 16)).astype(np.float32)} for _ in range(2)])
    assert "Shiftmax" in testing.op_types(model) and len(model.functions) == 0  # verify attaches the body itself
    report = integer_region.verify(model)
    assert report.ok, report.lines()
    assert len(report.entries) == 1 and len(report.exits) == 1 and report.functions == {"pkg.graphopt::Shiftmax": 1}
    assert report.nodes > 20  # the Cast plus Shiftmax's inlined body


# ---- graphopt.compile(integer_only=...) -------------------------------------------------------------


def test_compile_integer_only_fails_like_a_numeric_check(tmp_path):
    result = graphopt.compile(onnx.parser.parse_model(FLOAT_INSIDE), passes="cleanup", integer_only=True, bench_runs=0)
    assert not result.ok and result.report.accuracy  # the numerics were fine; the integer check was not
    assert result.report.violations == [result.report.integer_only["verdict"]]
    assert result.report.integer_only["ok"] is False and len(result.report.integer_only["float_ops"]) == 4
    with pytest.raises(CheckFailedError, match="float ops in the integer region"):
        result.check()
    written = result.save(tmp_path / "out")  # files are still written whole
    assert sorted(os.path.basename(p) for p in written) == ["model.onnx", "report.html", "report.json"]
    assert json.loads((tmp_path / "out" / "report.json").read_text())["integer_only"]["ok"] is False


def test_compile_integer_only_is_off_by_default_and_on_for_ivit():
    result = graphopt.compile(onnx.parser.parse_model(FLOAT_INSIDE), passes="cleanup", validate=False)
    assert result.ok and result.report.integer_only == {}
    clean = graphopt.compile(onnx.parser.parse_model(CLEAN), passes="cleanup", validate=False, integer_only=True)
    assert clean.ok and clean.report.integer_only["ok"] is True
    assert api._names_preset(parse_pipeline("cleanup,ivit"), "ivit")
    assert not api._names_preset(parse_pipeline("canonicalize,shiftmax"), "ivit")


# ---- the CLI ----------------------------------------------------------------------------------------------


def graphopt_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "graphopt", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture
def paths(tmp_path):
    out = {}
    for name, text in (("clean", CLEAN), ("inside", FLOAT_INSIDE), ("none", NO_QDQ)):
        out[name] = str(tmp_path / f"{name}.onnx")
        onnx.save(named(text), out[name])
    return out


def test_cli_inspect_integer_only(paths):
    ok = graphopt_cli("inspect", paths["clean"], "--integer-only")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines() == ["integer-only: 3 nodes between 1 entries and 1 exits, no float op"] and ok.stderr == ""

    bad = graphopt_cli("inspect", paths["inside"], "--integer-only")
    assert bad.returncode == 1, bad.stderr
    assert bad.stdout.splitlines()[:2] == ["float op: node 'd' (DequantizeLinear): d float32",
                                           "float op: node 'r' (Relu): d float32, r float32"]
    errors = bad.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("graphopt: integer-only check failed: 4 float ops in the integer region")
    assert "Traceback" not in bad.stderr

    none = graphopt_cli("inspect", paths["none"], "--integer-only", "--json")
    assert none.returncode == 1 and "Traceback" not in none.stderr
    assert json.loads(none.stdout)["ok"] is False
    errors = none.stderr.strip().splitlines()
    assert errors == ["graphopt: integer-only check failed: no integer region: no DequantizeLinear reads a computed integer value (2 float ops)"]


def test_cli_compile_integer_only(paths, tmp_path):
    result = graphopt_cli("compile", paths["inside"], "-o", str(tmp_path / "out"), "--passes", "cleanup",
                          "--integer-only", "--bench-runs", "0", "--no-validate")
    assert result.returncode == 1, result.stderr
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("graphopt: integer-only check failed: 4 float ops"), result.stderr
    assert sorted(f for f in os.listdir(tmp_path / "out") if not f.startswith(".")) == ["model.onnx", "report.html", "report.json"]
    assert "float op" in result.stdout
