"""shift-linear: MatMul/Gemm weights as packed signed powers of two (pkg.graphopt.ShiftMatMul).

Structure (golden op lists for a MatMul chain and a Gemm with bias, the metadata and the note),
one "does not fire" case per decline with its reason, numerics (the rewritten model in ONNX Runtime
equals x·decode(codes)·S computed in numpy from the pass's own quantization; powers of two round
trip exactly; the outputs stay close to the original), validity (full checker), the zero-free set
and the packed file size.
"""

from __future__ import annotations

import io

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from graphopt import ops, testing
from graphopt.ops.shift_matmul import OP_NAME, SQNR_KEY, decode, unpack
from graphopt.passes.shift_linear import quantize_shift, sqnr_db


def _floats(shape, seed, values=None):
    values = np.random.default_rng(seed).standard_normal(shape) * 0.5 if values is None else values
    return "{" + ", ".join(repr(float(v)) for v in np.ravel(np.asarray(values, np.float32))) + "}"


def _graph(body: str, weights: dict, opset: int = 20, inputs: str = "float[N, 8] x", out: str = "float[N, 8] y") -> str:
    inits = ", ".join(f"float[{', '.join(map(str, shape))}] {name} = {_floats(shape, i, values)}"
                      for i, (name, (shape, values)) in enumerate(weights.items()))
    return f'<ir_version: 10, opset_import: ["" : {opset}]>\ng ({inputs}) => ({out}) <{inits}> {{\n{body}\n}}'


CHAIN = _graph("h = MatMul(x, w1)\n r = Relu(h)\n o = MatMul(r, w2)\n y = Relu(o)",
               {"w1": ((8, 16), None), "w2": ((16, 8), None)})
GEMM = _graph("g = Gemm <transB = 1, alpha = 0.5, beta = 2.0> (x, w, c)\n y = Relu(g)", {"w": ((8, 8), None), "c": ((8,), None)})
RUNTIME_WEIGHT = ('<ir_version: 10, opset_import: ["" : 20]>\n'
                  "g (float[N, 8] x, float[8, 8] w) => (float[N, 8] y) {\n m = MatMul(x, w)\n y = Relu(m)\n}")
INTEGER = ('<ir_version: 10, opset_import: ["" : 20]>\n'
           "g (int32[N, 2] x) => (int32[N, 2] y) <int32[2, 2] w = {1, 2, 3, 4}> {\n m = MatMul(x, w)\n y = Add(m, x)\n}")
TRANS_A = _graph("g = Gemm <transA = 1> (x, w)\n y = Relu(g)", {"w": ((8, 8), None)}, inputs="float[8, N] x", out="float[N, 8] y")
OLD_OPSET = _graph("h = MatMul(x, w1)\n y = Relu(h)", {"w1": ((8, 8), None)}, opset=12)


def _weight(model_text: str, name: str) -> np.ndarray:
    proto = onnx.parser.parse_model(model_text)
    return next(onnx.numpy_helper.to_array(t) for t in proto.graph.initializer if t.name == name)


def _shift_nodes(model: ir.Model) -> list[ir.Node]:
    return [n for n in model.graph if n.op_type == OP_NAME and n.domain == ops.DOMAIN]


def _expected(x: np.ndarray, w: np.ndarray, bits=5, zero_free=False) -> np.ndarray:
    codes, s = quantize_shift(w, bits, zero_free)
    return (x @ decode(codes, bits, int(zero_free))) * s


def test_matmul_chain_becomes_shift_matmuls(check):
    result = check.run(CHAIN, "shift-linear")
    assert result.last.rewrites == {"shift-matmul": 2} and not result.last.declines
    assert result.ops == [OP_NAME, "Relu", OP_NAME, "Relu"]
    testing.assert_valid(result.model)
    nodes = _shift_nodes(result.model)
    assert all(float(n.metadata_props[SQNR_KEY]) > 5.0 for n in nodes)  # calibrated, per layer
    assert [n.metadata_props["pkg.graphopt.pass"] for n in nodes] == ["shift-linear"] * 2
    assert any("2 layers shifted" in note for note in result.last.notes)
    packed = result.model.graph.initializers[nodes[0].inputs[1].name].const_value.numpy()
    assert packed.dtype == np.int32 and packed.shape == (2, 16)  # K=8: two words of six codes
    # numerics: exactly x·D·S of the pass's own quantization, layer by layer
    x = check.feeds(result.original)["x"]
    h = np.maximum(_expected(x, _weight(CHAIN, "w1")), 0)
    want = np.maximum(_expected(h, _weight(CHAIN, "w2")), 0)
    np.testing.assert_allclose(testing.run_ort(result.model, {"x": x})[0], want, rtol=1e-5, atol=1e-5)
    original = testing.run_ort(result.original, {"x": x})[0]
    assert sqnr_db(original, testing.run_ort(result.model, {"x": x})[0]) > 10.0


def test_gemm_with_transb_alpha_and_bias(check):
    result = check.run(GEMM, "shift-linear")
    assert result.last.rewrites == {"shift-gemm": 1}
    assert result.ops == [OP_NAME, "Add", "Relu"]
    testing.assert_valid(result.model)
    x = check.feeds(result.original)["x"]
    w = (_weight(GEMM, "w").T * 0.5).astype(np.float32)
    want = np.maximum(_expected(x, w) + 2.0 * _weight(GEMM, "c"), 0)
    np.testing.assert_allclose(testing.run_ort(result.model, {"x": x})[0], want, rtol=1e-5, atol=1e-5)


def test_powers_of_two_round_trip_exactly(check):
    rng = np.random.default_rng(testing.SEED)
    w = (rng.choice([-1.0, 1.0], (8, 8)) * 2.0 ** -rng.integers(0, 10, (8, 8))).astype(np.float32)
    w[:, 3] *= 3.0  # a column scale that is not a power of two
    model = _graph("h = MatMul(x, w)\n y = Relu(h)", {"w": ((8, 8), w)})
    check.fires(model, "shift-linear", [OP_NAME, "Relu"], rtol=1e-6, atol=1e-6)
    assert sqnr_db(w, decode(*[quantize_shift(w)[0]]) * quantize_shift(w)[1]) == np.inf


def test_zero_free_has_no_zero_codes_and_ternary_zeroes_tiny_weights(check):
    w = np.full((8, 8), 0.5, np.float32)
    w[0, 0], w[1, 1] = 1e-9, -1e-9  # far below 2^-14 of the column's scale
    model = _graph("h = MatMul(x, w)\n y = Relu(h)", {"w": ((8, 8), w)})
    for zero_free, zeros in ((False, 2), (True, 0)):
        result = check.run(model, f"shift-linear(zero_free={str(zero_free).lower()})")
        node = _shift_nodes(result.model)[0]
        assert node.attributes["zero_free"].value == int(zero_free)
        codes = unpack(result.model.graph.initializers[node.inputs[1].name].const_value.numpy(), 8)
        assert int((decode(codes, 5, int(zero_free)) == 0).sum()) == zeros
        testing.assert_valid(result.model)


def test_layers_and_min_sqnr_select(check):
    result = check.run(CHAIN, "shift-linear(layers=w2)")
    assert result.ops == ["MatMul", "Relu", OP_NAME, "Relu"]
    assert any("is not selected by layers=w2" in d for d in result.last.declines)
    result = check.run(CHAIN, "shift-linear(layers=!w2)")
    assert result.ops == [OP_NAME, "Relu", "MatMul", "Relu"]
    check.declines(CHAIN, "shift-linear(min_sqnr=150)", "is below min_sqnr=150: kept dense")


@pytest.mark.parametrize(("source", "reason"), [
    (RUNTIME_WEIGHT, "is not a constant float32 2-D matrix"),
    (INTEGER, "not float32"),
    (TRANS_A, "transA=1"),
    (OLD_OPSET, "needs opset >= 13, model has 12"),
])
def test_declines(check, source, reason):
    check.declines(source, "shift-linear", reason)


def test_model_file_shrinks_about_6x():
    w = np.random.default_rng(testing.SEED).standard_normal((384, 384)).astype(np.float32)
    from tests.passes.conftest import PassChecker  # noqa: PLC0415

    result = PassChecker().run(_graph("h = MatMul(x, w)\n y = Relu(h)", {"w": ((384, 384), w)}, inputs="float[N, 384] x",
                                      out="float[N, 384] y"), "shift-linear")
    sizes = []
    for model in (result.original, ir.to_proto(result.model)):
        buffer = io.BytesIO()
        onnx.save(model, buffer)
        sizes.append(len(buffer.getvalue()))
    assert sizes[0] / sizes[1] > 5.0, sizes  # 384·384·4 bytes -> 64·384·4 + 384·4


def test_preset_shiftadd_is_canonicalize_then_shift_linear(check):
    result = check.run(CHAIN, "shiftadd")
    assert [r.name for r in result.records][-2:] == ["shift-linear", "binary-attention"]  # no attention here: left alone
    assert result.ops == [OP_NAME, "Relu", OP_NAME, "Relu"]
    testing.assert_valid(result.model)


def test_opset_13_model_gets_a_valid_body(check):
    """The op's body uses only opset-13 ops (no Shape start=, no CastLike): valid and run at the lowest opset taken."""
    model = _graph("h = MatMul(x, w1)\n y = Relu(h)", {"w1": ((8, 8), None)}, opset=13)
    check.fires(model, "shift-linear", [OP_NAME, "Relu"], rtol=1.0, atol=10.0)  # validity + it runs; closeness is tested above


def test_report_has_a_shift_section_that_validates():
    import json  # noqa: PLC0415
    import pathlib  # noqa: PLC0415

    import graphopt  # noqa: PLC0415

    jsonschema = pytest.importorskip("jsonschema")
    result = graphopt.compile(onnx.parser.parse_model(CHAIN), passes="shift-linear", bench_runs=0)
    shift = result.report.data["shift"]
    assert [(layer["k"], layer["n"]) for layer in shift["layers"]] == [(8, 16), (16, 8)]
    assert all(layer["sqnr_db"] > 5.0 and layer["bits"] == 5 for layer in shift["layers"])
    assert shift["float32_bytes"] == (8 * 16 + 16 * 8) * 4 and shift["ratio"] > 1.0
    schema = json.loads((pathlib.Path(__file__).parents[2] / "docs" / "report.schema.json").read_text())
    jsonschema.validate(result.report.as_dict(), schema)
