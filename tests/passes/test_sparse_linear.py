"""sparse-linear: linear layers reading thresholded activations become the sparse-kernel ops.

Structure (golden op lists for a CATS-style SwiGLU MLP and TEAL-style thresholded inputs), one
does-not-fire case per decline with its reason, numerics against the original through ONNX
Runtime (the ops' bodies), onnx.checker full check (in ``check.fires``); and the TVM preparation
running the pass on a CATS-rewritten tiny LLaMA decode graph whose tvm-llvm build matches ORT.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.numpy_helper
import onnx.parser
import onnx_ir as ir
import pytest

from graphopt import ops, testing
from graphopt.pipeline import run_pipeline


def _floats(shape, seed):
    values = np.random.default_rng(seed).standard_normal(shape) * 0.5
    return "{" + ", ".join(f"{v:.5f}" for v in values.ravel()) + "}"


def _with_functions(text: str) -> onnx.ModelProto:
    """The model with the graphopt ops' function bodies, so ONNX Runtime runs the original too."""
    model = ir.serde.deserialize_model(onnx.parser.parse_model(text))
    ops.attach_functions(model)
    return ir.to_proto(model)


def graph(body: str, weights: dict[str, tuple[int, int]], x: str = "float[1, 8] x", out: str = "float[1, 8] y") -> onnx.ModelProto:
    inits = ", ".join(f"float[{a}, {b}] {name} = {_floats((a, b), i)}" for i, (name, (a, b)) in enumerate(weights.items()))
    return _with_functions(f'<ir_version: 10, opset_import: ["" : 20, "pkg.graphopt" : 1]>\n'
                           f"g ({x}) => ({out}) <{inits}, float t = {{0.3}}> {{\n{body}\n}}")


MLP = {"wg": (8, 16), "wu": (8, 16), "wd": (16, 8)}
CATS_BODY = """gate = MatMul(x, wg)
 s = Sigmoid(gate)
 act = Mul(gate, s)
 a = pkg.graphopt.ActivationThreshold(act, t)
 up = MatMul(x, wu)
 h = Mul(a, up)
 y = MatMul(h, wd)"""
CATS = graph(CATS_BODY, MLP)
CATS_UP_FIRST = graph(CATS_BODY.replace("h = Mul(a, up)", "h = Mul(up, a)"), MLP)
TEAL = graph("""xt = pkg.graphopt.ActivationThreshold(x, t)
 gate = MatMul(xt, wg)
 up = MatMul(xt, wu)
 h = Mul(gate, up)
 ht = pkg.graphopt.ActivationThreshold(h, t)
 y = MatMul(ht, wd)""", MLP)
DENSE = graph("h = MatMul(x, wg)\n r = Relu(h)\n y = MatMul(r, wd)", {"wg": (8, 16), "wd": (16, 8)})
NOT_THRESHOLDED = graph("xt = pkg.graphopt.ActivationThreshold(x, t)\n h = MatMul(x, wg)\n r = Relu(h)\n o = MatMul(r, wd)\n"
                        " y = Add(o, xt)", {"wg": (8, 16), "wd": (16, 8)})
PREFILL = graph("xt = pkg.graphopt.ActivationThreshold(x, t)\n y = MatMul(xt, w)", {"w": (8, 8)},
                x="float[2, 16, 8] x", out="float[2, 16, 8] y")
DYNAMIC = graph("xt = pkg.graphopt.ActivationThreshold(x, t)\n y = MatMul(xt, w)", {"w": (8, 8)},
                x="float[N, 8] x", out="float[N, 8] y")
UP_READ_TWICE = graph(CATS_BODY + "\n z = Relu(up)", MLP, out="float[1, 8] y, float[1, 16] z")
BROADCAST_GATE = graph(CATS_BODY.replace("a = pkg.graphopt.ActivationThreshold(act, t)", "a = pkg.graphopt.ActivationThreshold(c, t)")
                       .replace("gate = MatMul(x, wg)", "c = ReduceMean <keepdims = 1> (x)\n gate = MatMul(x, wg)")
                       .replace("y = MatMul(h, wd)", "y = Add(h, h)"), MLP, out="float[1, 16] y")
RUNTIME_WEIGHT = _with_functions('<ir_version: 10, opset_import: ["" : 20, "pkg.graphopt" : 1]>\n'
                  "g (float[1, 8] x, float[8, 8] w) => (float[1, 8] y) <float t = {0.3}> {\n"
                  " xt = pkg.graphopt.ActivationThreshold(x, t)\n y = MatMul(xt, w)\n}")
GEMM_BODY = """xt = pkg.graphopt.ActivationThreshold(x, t)
 y = Gemm <alpha = 0.5, beta = 2.0, transB = 1> (xt, w, c)"""
GEMM = _with_functions('<ir_version: 10, opset_import: ["" : 20, "pkg.graphopt" : 1]>\n'
                       f"g (float[1, 8] x) => (float[1, 4] y) <float[4, 8] w = {_floats((4, 8), 0)}, float[4] c = {_floats((4,), 1)}, "
                       f"float t = {{0.3}}> {{\n{GEMM_BODY}\n}}")
GPT2_MLP = _with_functions('<ir_version: 10, opset_import: ["" : 20, "pkg.graphopt" : 1]>\n'
                           f"g (float[1, 1, 8] x) => (float[1, 8] y) <float[8, 8] w = {_floats((8, 8), 3)}, int64[2] shape = {{1, 8}}, "
                           "float t = {0.3}> {\n xt = pkg.graphopt.ActivationThreshold(x, t)\n flat = Reshape(xt, shape)\n y = Gemm(flat, w)\n}")
GEMM_TRANS_A = _with_functions('<ir_version: 10, opset_import: ["" : 20, "pkg.graphopt" : 1]>\n'
                               f"g (float[8, 1] x) => (float[1, 8] y) <float[8, 8] w = {_floats((8, 8), 2)}, float t = {{0.3}}> {{\n"
                               " xt = pkg.graphopt.ActivationThreshold(x, t)\n y = Gemm <transA = 1> (xt, w)\n}")
DOUBLE = _with_functions('<ir_version: 10, opset_import: ["" : 20, "pkg.graphopt" : 1]>\n'
        "g (double[1, 4] x) => (double[1, 4] y) <double[4, 4] w = {1.0, 2.0, 3.0, 4.0, 1.0, 2.0, 3.0, 4.0, 1.0, 2.0, 3.0, 4.0, 1.0, 2.0, 3.0, 4.0}, "
        "double t = {0.3}> {\n xt = pkg.graphopt.ActivationThreshold(x, t)\n y = MatMul(xt, w)\n}")


def test_cats_mlp_gets_the_gated_up_and_the_sparse_down(check):
    result = check.fires(CATS, "sparse-linear",
                         ["MatMul", "Sigmoid", "Mul", "ActivationThreshold", "SparseGatedMatMul", "SparseInputMatMul"], atol=1e-5)
    assert result.last.rewrites == {"sparse-gated-up": 1, "sparse-input-matmul": 1}
    gated = next(n for n in result.model.graph if n.op_type == "SparseGatedMatMul")
    assert gated.domain == ops.DOMAIN and [v.name for v in gated.inputs[:2]] == ["a", "x"]
    wu = next(t for t in CATS.graph.initializer if t.name == "wu")
    np.testing.assert_array_equal(gated.inputs[2].const_value.numpy(), onnx.numpy_helper.to_array(wu).T)


def test_gate_on_either_side_of_the_product(check):
    result = check.fires(CATS_UP_FIRST, "sparse-linear", None, atol=1e-5)
    assert result.last.rewrites == {"sparse-gated-up": 1, "sparse-input-matmul": 1}


def test_teal_inputs_become_sparse_input_matmuls(check):
    result = check.fires(TEAL, "sparse-linear", ["ActivationThreshold", "SparseInputMatMul", "SparseInputMatMul", "Mul",
                                                 "ActivationThreshold", "SparseInputMatMul"], atol=1e-5)
    assert result.last.rewrites == {"sparse-input-matmul": 3}


def test_threshold_nodes_keep_their_metadata(check):
    model = ir.serde.deserialize_model(CATS)
    threshold = next(n for n in model.graph if n.op_type == "ActivationThreshold")
    threshold.metadata_props["pkg.graphopt.sparsity.target"] = "0.5"
    run_pipeline(model, "sparse-linear")
    kept = next(n for n in model.graph if n.op_type == "ActivationThreshold")
    assert kept.metadata_props["pkg.graphopt.sparsity.target"] == "0.5"


@pytest.mark.parametrize("source, reason", [
    (NOT_THRESHOLDED, "is not thresholded"),
    (PREFILL, "rows (> max_rows=8)"),
    (DYNAMIC, "is not static"),
    (BROADCAST_GATE, "(broadcast)"),
    (RUNTIME_WEIGHT, "is not a constant float32 2-D matrix"),
    (DOUBLE, "is not a constant float32 2-D matrix"),
    (GEMM_TRANS_A, "has transA=1"),
])
def test_does_not_fire(check, source, reason):
    check.declines(source, "sparse-linear", reason)


def test_a_graph_without_thresholds_is_left_alone_before_shape_inference(check):
    result = check.run(DENSE, "sparse-linear")
    assert not result.last.modified and result.ops == testing.op_types(result.original)


def test_up_projection_with_other_readers_keeps_its_matmul(check):
    """onnxscript does not match a subgraph whose inner value (``up``) has a reader outside it."""
    result = check.fires(UP_READ_TWICE, "sparse-linear",
                         ["MatMul", "Sigmoid", "Mul", "ActivationThreshold", "MatMul", "Mul", "SparseInputMatMul", "Relu"], atol=1e-5)
    assert result.last.rewrites == {"sparse-input-matmul": 1}


def test_max_rows_option_admits_prefill(check):
    result = check.fires(PREFILL, "sparse-linear(max_rows=32)", ["ActivationThreshold", "SparseInputMatMul"], atol=1e-5)
    assert result.last.rewrites == {"sparse-input-matmul": 1}


def test_tiny_llama_cats_decode_on_tvm_matches_onnx_runtime():
    pytest.importorskip("tvm")
    pytest.importorskip("torch")
    tiny_llama = pytest.importorskip("graphopt.models.tiny_llama")
    from graphopt.backends import tvm as tvm_backend  # noqa: PLC0415

    proto = tiny_llama.build(graph="decode")
    calib = [tiny_llama.example_inputs(seed=s, graph="decode") for s in range(8)]
    model = ir.serde.deserialize_model(proto)
    run_pipeline(model, "canonicalize,cats(sparsity=0.5)", samples=calib)
    feeds = tiny_llama.example_inputs(seed=100, graph="decode")
    artifact = tvm_backend.compile(model, target="tvm-llvm", example_inputs=feeds)
    rewrites = [p["rewrites"] for p in artifact.details["prepare"] if p["pass"] == "sparse-linear" and p["rewrites"]]
    assert rewrites == [{"sparse-gated-up": 2, "sparse-input-matmul": 2}]  # both layers: up and down
    ops.attach_functions(model)
    expected = testing.run_ort(model, feeds)
    got = artifact.run(feeds)
    for value, want in zip(got.values(), expected):
        np.testing.assert_allclose(value, want, rtol=1e-4, atol=1e-5)


def test_gemm_folds_alpha_beta_and_transb(check):
    result = check.fires(GEMM, "sparse-linear", ["ActivationThreshold", "SparseInputMatMul", "Add"], atol=1e-5)
    assert result.last.rewrites == {"sparse-input-gemm": 1}
    sparse = next(n for n in result.model.graph if n.op_type == "SparseInputMatMul")
    w = onnx.numpy_helper.to_array(next(t for t in GEMM.graph.initializer if t.name == "w"))
    np.testing.assert_array_equal(sparse.inputs[1].const_value.numpy(), np.ascontiguousarray(w.T * np.float32(0.5)))


def test_gemm_behind_a_reshape(check):
    """GPT-2's MLP: the thresholded activation is flattened to 2-D before its Gemm."""
    result = check.fires(GPT2_MLP, "sparse-linear", ["ActivationThreshold", "Reshape", "SparseInputMatMul"], atol=1e-5)
    assert result.last.rewrites == {"sparse-input-gemm": 1}


# --- int8 weights (weight-only int8: DequantizeLinear per output column, or Cast + Mul) ----------

def _int8s(shape, seed):
    values = np.random.default_rng(seed).integers(-128, 128, shape)
    return "{" + ", ".join(str(int(v)) for v in values.ravel()) + "}"


def _scales(n, seed):
    return "{" + ", ".join(f"{v:.5f}" for v in np.random.default_rng(seed).random(n) * 0.01 + 0.001) + "}"


def int8_graph(body: str, weights: dict[str, tuple[int, int]], zero: bool = True) -> onnx.ModelProto:
    """Each weight ``w`` stored as ``w_q`` int8 [K, N] with ``w_s`` float [N] (and ``w_z`` int8 zeros [N])."""
    inits = []
    for i, (name, (k, n)) in enumerate(weights.items()):
        inits += [f"int8[{k}, {n}] {name}_q = {_int8s((k, n), i)}", f"float[{n}] {name}_s = {_scales(n, 10 + i)}"]
        if zero:
            inits.append(f"int8[{n}] {name}_z = {{{', '.join(['0'] * n)}}}")
    dq = "\n ".join(f"{name} = DequantizeLinear <axis = 1> ({name}_q, {name}_s{', ' + name + '_z' if zero else ''})"
                    for name in weights)
    return _with_functions('<ir_version: 10, opset_import: ["" : 20, "pkg.graphopt" : 1]>\n'
                           f"g (float[1, 8] x) => (float[1, 8] y) <{', '.join(inits)}, float t = {{0.3}}> {{\n {dq}\n{body}\n}}")


CATS_INT8 = int8_graph(CATS_BODY, MLP)
TEAL_INT8 = int8_graph("""xt = pkg.graphopt.ActivationThreshold(x, t)
 gate = MatMul(xt, wg)
 up = MatMul(xt, wu)
 h = Mul(gate, up)
 ht = pkg.graphopt.ActivationThreshold(h, t)
 y = MatMul(ht, wd)""", MLP, zero=False)
CASTMUL_INT8 = _with_functions('<ir_version: 10, opset_import: ["" : 20, "pkg.graphopt" : 1]>\n'
                               f"g (float[1, 8] x) => (float[1, 8] y) <int8[8, 8] w_q = {_int8s((8, 8), 5)}, "
                               f"float[1, 8] w_s = {_scales(8, 6)}, float t = {{0.3}}> {{\n"
                               " wf = Cast <to = 1> (w_q)\n w = Mul(wf, w_s)\n xt = pkg.graphopt.ActivationThreshold(x, t)\n"
                               " y = MatMul(xt, w)\n}")
INT8_NONZERO_ZERO_POINT = _with_functions('<ir_version: 10, opset_import: ["" : 20, "pkg.graphopt" : 1]>\n'
                                          f"g (float[1, 8] x) => (float[1, 8] y) <int8[8, 8] w_q = {_int8s((8, 8), 5)}, "
                                          f"float[8] w_s = {_scales(8, 6)}, int8[8] w_z = {{1, 0, 0, 0, 0, 0, 0, 0}}, float t = {{0.3}}> {{\n"
                                          " w = DequantizeLinear <axis = 1> (w_q, w_s, w_z)\n"
                                          " xt = pkg.graphopt.ActivationThreshold(x, t)\n y = MatMul(xt, w)\n}")
INT8_PER_ROW = _with_functions('<ir_version: 10, opset_import: ["" : 20, "pkg.graphopt" : 1]>\n'
                               f"g (float[1, 8] x) => (float[1, 8] y) <int8[8, 8] w_q = {_int8s((8, 8), 5)}, "
                               f"float[8] w_s = {_scales(8, 6)}, float t = {{0.3}}> {{\n"
                               " w = DequantizeLinear <axis = 0> (w_q, w_s)\n"
                               " xt = pkg.graphopt.ActivationThreshold(x, t)\n y = MatMul(xt, w)\n}")


def test_cats_mlp_with_int8_weights_keeps_them_int8(check):
    result = check.fires(CATS_INT8, "sparse-linear", ["SparseInputMatMulInt8", "Sigmoid", "Mul", "ActivationThreshold",
                                                     "SparseGatedMatMulInt8", "SparseInputMatMulInt8"], atol=1e-5)
    assert result.last.rewrites == {"sparse-gated-up": 1, "sparse-input-matmul": 1, "int8-dense-matmul": 1}  # the gate: int8 GEMV
    gated = next(n for n in result.model.graph if n.op_type == "SparseGatedMatMulInt8")
    wu_q = onnx.numpy_helper.to_array(next(t for t in CATS_INT8.graph.initializer if t.name == "wu_q"))
    wu_s = onnx.numpy_helper.to_array(next(t for t in CATS_INT8.graph.initializer if t.name == "wu_s"))
    np.testing.assert_array_equal(gated.inputs[2].const_value.numpy(), wu_q.T)  # stored transposed, still int8
    np.testing.assert_array_equal(gated.inputs[3].const_value.numpy(), wu_s)
    assert [n.inputs[1].name for n in result.model.graph if n.op_type == "SparseInputMatMulInt8"] == ["wg_q", "wd_q"]  # no copies


def test_int8_projection_of_an_unthresholded_input_needs_a_thresholded_graph(check):
    """The int8 GEMV rule only runs where the pass runs at all: on graphs with thresholds."""
    plain = int8_graph("h = MatMul(x, wg)\n r = Relu(h)\n y = MatMul(r, wd)", {"wg": (8, 16), "wd": (16, 8)})
    result = check.run(plain, "sparse-linear")
    assert not result.last.modified and result.ops == testing.op_types(result.original)


def test_teal_with_int8_weights_without_zero_points(check):
    result = check.fires(TEAL_INT8, "sparse-linear", ["ActivationThreshold", "SparseInputMatMulInt8", "SparseInputMatMulInt8",
                                                     "Mul", "ActivationThreshold", "SparseInputMatMulInt8"], atol=1e-5)
    assert result.last.rewrites == {"sparse-input-matmul": 3}


def test_cast_mul_int8_weight(check):
    result = check.fires(CASTMUL_INT8, "sparse-linear", ["ActivationThreshold", "SparseInputMatMulInt8"], atol=1e-5)
    sparse = next(n for n in result.model.graph if n.op_type == "SparseInputMatMulInt8")
    assert sparse.inputs[2].const_value.numpy().shape == (8,)


@pytest.mark.parametrize("source", [INT8_NONZERO_ZERO_POINT, INT8_PER_ROW], ids=["zero-point", "per-row-scale"])
def test_int8_weight_not_per_output_channel_does_not_fire(check, source):
    check.declines(source, "sparse-linear", "nor int8 dequantized per output channel")
