"""shift-linear on convolutions: Conv weights as packed power-of-two codes (pkg.graphopt.ShiftConv).

Structure (golden op lists: a 2-D conv with bias, a depthwise conv, a 1-D conv without bias; the
metadata), "does not fire" cases with their reasons (a weight fed at run time, auto_pad SAME, a
conv not selected by ``layers``, ``min_sqnr``), numerics (ONNX Runtime, optimizations off, equals the
conv with ``decode(codes) · S`` computed in numpy from the pass's own quantization), validity (full
checker), the packed file size, and ``latency=auto`` (convs stay dense; MatMuls follow the measured
times, here injected, and carry them as metadata).
"""

from __future__ import annotations

import io

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from graphopt import ops, testing
from graphopt.ops.shift_conv import OP_NAME, conv_reference, weight_matrix
from graphopt.ops.shift_matmul import SQNR_KEY, decode
from graphopt.passes.shift_linear import DENSE_MS_KEY, SHIFT_MS_KEY, quantize_shift


def _floats(shape, seed, values=None):
    values = np.random.default_rng(seed).standard_normal(shape) * 0.5 if values is None else values
    return "{" + ", ".join(repr(float(v)) for v in np.ravel(np.asarray(values, np.float32))) + "}"


def _graph(body: str, weights: dict, inputs: str = "float[N, 4, 6, 6] x", out: str = "float[N, 8, 6, 6] y") -> str:
    inits = ", ".join(f"float[{', '.join(map(str, shape))}] {name} = {_floats(shape, i)}" for i, (name, shape) in enumerate(weights.items()))
    return f'<ir_version: 10, opset_import: ["" : 20]>\ng ({inputs}) => ({out}) <{inits}> {{\n{body}\n}}'


CONV_BIAS = _graph("c = Conv <pads = [1, 1, 1, 1]> (x, w, b)\n y = Relu(c)", {"w": (8, 4, 3, 3), "b": (8,)})
DEPTHWISE = _graph("c = Conv <group = 4, pads = [1, 0, 1, 2], dilations = [1, 2], strides = [2, 1]> (x, w)\n y = Relu(c)",
                   {"w": (4, 1, 3, 3)}, out="float[N, 4, 3, 4] y")
CONV_1D = _graph("c = Conv <strides = [2]> (x, w)\n y = Relu(c)", {"w": (6, 3, 3)}, inputs="float[N, 3, 11] x",
                 out="float[N, 6, 5] y")
RUNTIME_WEIGHT = ('<ir_version: 10, opset_import: ["" : 20]>\n'
                  "g (float[N, 4, 6, 6] x, float[8, 4, 3, 3] w) => (float[N, 8, 4, 4] y) {\n c = Conv(x, w)\n y = Relu(c)\n}")
SAME = _graph('c = Conv <auto_pad = "SAME_UPPER"> (x, w)\n y = Relu(c)', {"w": (8, 4, 3, 3)})
CONV_THEN_MATMUL = _graph("c = Conv <pads = [1, 1, 1, 1]> (x, w)\n r = Relu(c)\n y = MatMul(r, m)",
                          {"w": (8, 4, 3, 3), "m": (6, 6)})


def _weight(model_text: str, name: str) -> np.ndarray:
    proto = onnx.parser.parse_model(model_text)
    return next(onnx.numpy_helper.to_array(t) for t in proto.graph.initializer if t.name == name)


def _shifted_weight(w: np.ndarray, zero_free=False) -> np.ndarray:
    codes, s = quantize_shift(weight_matrix(w), 5, zero_free)
    return (decode(codes, 5, int(zero_free)) * s).T.reshape(w.shape)


def _nodes(model: ir.Model, op_type: str = OP_NAME) -> list[ir.Node]:
    return [n for n in model.graph if n.op_type == op_type and n.domain == ops.DOMAIN]


@pytest.mark.parametrize(("source", "conv"), [
    (CONV_BIAS, {"pads": [1, 1, 1, 1]}),
    (DEPTHWISE, {"group": 4, "pads": [1, 0, 1, 2], "dilations": [1, 2], "strides": [2, 1]}),
    (CONV_1D, {"strides": [2]}),
], ids=["bias", "depthwise", "1d"])
def test_conv_becomes_shift_conv_and_equals_the_decoded_conv(check, source, conv):
    result = check.run(source, "shift-linear")
    assert result.last.rewrites == {"shift-conv": 1} and not result.last.declines
    assert result.ops == [OP_NAME, "Relu"]
    testing.assert_valid(result.model)
    node = _nodes(result.model)[0]
    w = _weight(source, "w")
    assert list(node.attributes["kernel_shape"].value) == list(w.shape[2:])
    assert float(node.metadata_props[SQNR_KEY]) > 5.0
    packed = result.model.graph.initializers[node.inputs[1].name].const_value.numpy()
    k = int(np.prod(w.shape[1:]))
    assert packed.dtype == np.int32 and packed.shape == (-(-k // 6), w.shape[0])
    x = check.feeds(result.original)["x"]
    bias = _weight(source, "b") if "b" in source.split("Conv")[1].split("\n")[0] else 0.0
    want = conv_reference(x, _shifted_weight(w), **conv) + np.reshape(bias, (1, -1) + (1,) * (w.ndim - 2))
    got = testing.run_ort(result.model, {"x": x})[0]
    np.testing.assert_allclose(got, np.maximum(want, 0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("source", "pipeline", "reason"), [
    (RUNTIME_WEIGHT, "shift-linear", "is not a constant float32 conv weight"),
    (SAME, "shift-linear", "auto_pad=SAME_UPPER"),
    (CONV_BIAS, "shift-linear(layers=nothing*)", "is not selected by layers=nothing*"),
    (CONV_BIAS, "shift-linear(min_sqnr=150)", "is below min_sqnr=150: kept dense"),
])
def test_declines(check, source, pipeline, reason):
    check.declines(source, pipeline, reason)


def test_zero_free_conv_runs_and_has_no_zero_weights(check):
    result = check.run(CONV_BIAS, "shift-linear(zero_free=true)")
    node = _nodes(result.model)[0]
    assert node.attributes["zero_free"].value == 1
    x = check.feeds(result.original)["x"]
    want = conv_reference(x, _shifted_weight(_weight(CONV_BIAS, "w"), True), pads=[1, 1, 1, 1])
    want = want + _weight(CONV_BIAS, "b").reshape(1, -1, 1, 1)
    np.testing.assert_allclose(testing.run_ort(result.model, {"x": x})[0], np.maximum(want, 0), rtol=1e-5, atol=1e-5)


def test_conv_file_shrinks_over_5x():
    from tests.passes.conftest import PassChecker  # noqa: PLC0415

    source = _graph("c = Conv <pads = [1, 1, 1, 1]> (x, w)\n y = Relu(c)", {"w": (64, 64, 3, 3)},
                    inputs="float[1, 64, 6, 6] x", out="float[1, 64, 6, 6] y")
    result = PassChecker().run(source, "shift-linear")
    sizes = []
    for model in (result.original, ir.to_proto(result.model)):
        buffer = io.BytesIO()
        onnx.save(model, buffer)
        sizes.append(len(buffer.getvalue()))
    assert sizes[0] / sizes[1] > 5.0, sizes  # 64·576·4 bytes -> 96·64·4 + scale and bias


def test_latency_auto_keeps_convs_dense_and_follows_the_measured_times(check, monkeypatch):
    from graphopt import shift_latency  # noqa: PLC0415

    calls = []

    def fake(rows, k, n, bits, zero_free, threads):
        calls.append((rows, k, n))
        return shift_latency.LayerTimes(dense_ms=2.0, shift_ms=1.0 if fake.faster else 3.0, target="test")

    monkeypatch.setattr(shift_latency, "layer_times", fake)
    fake.faster = True
    result = check.run(CONV_THEN_MATMUL, "shift-linear(latency=auto)")
    assert result.ops == ["Conv", "Relu", "ShiftMatMul"]
    assert any("keeps convolutions dense" in d for d in result.last.declines)
    assert calls == [(8 * 6, 6, 6)]  # rows: the calibrated (synthetic: batch 1) input [1, 8, 6, 6] as rows of 6
    matmul = _nodes(result.model, "ShiftMatMul")[0]
    assert (matmul.metadata_props[DENSE_MS_KEY], matmul.metadata_props[SHIFT_MS_KEY]) == ("2.0000", "1.0000")
    fake.faster = False
    result = check.run(CONV_THEN_MATMUL, "shift-linear(latency=auto)")
    assert result.ops == ["Conv", "Relu", "MatMul"]
    assert any("is not faster than dense 2.0000 ms" in d for d in result.last.declines)
    dense = next(n for n in result.model.graph if n.op_type == "MatMul")
    assert dense.metadata_props[SHIFT_MS_KEY] == "3.0000"


def test_report_section_lists_convs_and_prints_a_table():
    import json  # noqa: PLC0415
    import pathlib  # noqa: PLC0415

    from rich.console import Console  # noqa: PLC0415

    import graphopt  # noqa: PLC0415
    from graphopt.report import render  # noqa: PLC0415

    result = graphopt.compile(onnx.parser.parse_model(CONV_THEN_MATMUL), passes="shift-linear", bench_runs=0, validate=False)
    shift = result.report.data["shift"]
    assert [(layer["op"], layer["k"], layer["n"]) for layer in shift["layers"]] == [("ShiftMatMul", 6, 6), (OP_NAME, 36, 8)]
    assert shift["layers"][1]["float32_bytes"] == 36 * 8 * 4 and shift["layers"][1]["packed_bytes"] == (6 * 8 + 8) * 4
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((pathlib.Path(__file__).parents[2] / "docs" / "report.schema.json").read_text())
    jsonschema.validate(result.report.as_dict(), schema)
    console = Console(record=True, width=200)
    render(result.report, console)
    text = console.export_text()
    assert "shifted layers (shift-linear): 2" in text and "36 x 8" in text and "ShiftConv" in text


def test_report_shows_latency_choices(monkeypatch):
    import json  # noqa: PLC0415
    import pathlib  # noqa: PLC0415

    from rich.console import Console  # noqa: PLC0415

    import graphopt  # noqa: PLC0415
    from graphopt import shift_latency  # noqa: PLC0415
    from graphopt.report import render  # noqa: PLC0415

    monkeypatch.setattr(shift_latency, "layer_times", lambda rows, k, n, *_: shift_latency.LayerTimes(1.5, 2.5, "test"))
    result = graphopt.compile(onnx.parser.parse_model(CONV_THEN_MATMUL), passes="shift-linear(latency=auto)", bench_runs=0,
                              validate=False)
    shift = result.report.data["shift"]
    assert shift["layers"] == [] and shift["kept_dense"] == [{"node": shift["kept_dense"][0]["node"], "op": "MatMul",
                                                              "dense_ms": 1.5, "shift_ms": 2.5}]
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((pathlib.Path(__file__).parents[2] / "docs" / "report.schema.json").read_text())
    jsonschema.validate(result.report.as_dict(), schema)
    console = Console(record=True, width=200)
    render(result.report, console)
    text = " ".join(console.export_text().split())
    assert "1 kept dense by latency=auto" in text and "MatMul (kept dense)" in text and "2.5000" in text
