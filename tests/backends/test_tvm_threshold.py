"""The TVM kernel of ``ActivationThreshold`` is exact: vs the numpy reference on the op's examples and
seeded cases (per-tensor and per-channel t, constant or not), and a tvm-llvm build of a model using
the op matches ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx.parser
import onnx_ir as ir
import pytest

tvm = pytest.importorskip("tvm")
from tvm import relax  # noqa: E402

from graphopt import ops, testing  # noqa: E402
from graphopt.backends import tvm as tvm_backend  # noqa: E402
from graphopt.backends.tvm.kernels import CONVERTERS, TE_KERNELS  # noqa: E402
from graphopt.ops.threshold import threshold_reference  # noqa: E402


def _run_converter(x: np.ndarray, t: np.ndarray, *, constant_t: bool) -> np.ndarray:
    bb = relax.BlockBuilder()
    x_var = relax.Var("x", relax.TensorType(x.shape, str(x.dtype)))
    params, feeds = [x_var], [x]
    if constant_t:
        t_arg = relax.const(t)
    else:
        t_arg = relax.Var("t", relax.TensorType(t.shape, str(t.dtype)))
        params.append(t_arg)
        feeds.append(t)
    with bb.function("main", params):
        with bb.dataflow():
            out = bb.emit_output(CONVERTERS["ActivationThreshold"](bb, [x_var, t_arg], {"tvm_custom": {"name": "n0"}}))
        bb.emit_func_output(out)
    vm = relax.VirtualMachine(tvm.compile(bb.get(), target=tvm.target.Target({"kind": "llvm"})), tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(a) for a in feeds]).numpy()


def test_registered_for_tvm():
    assert "ActivationThreshold" in CONVERTERS and "ActivationThreshold" in TE_KERNELS


@pytest.mark.parametrize("constant_t", [False, True])
def test_examples_are_exact(constant_t):
    for (x, t), _ in ops.get_op("ActivationThreshold").examples():
        got = _run_converter(x, t, constant_t=constant_t)
        expected = threshold_reference(x, t)
        assert got.dtype == expected.dtype and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)  # NaN positions are 0 in both: plain equality


def test_random_per_channel_is_exact():
    rng = np.random.default_rng(testing.SEED)
    x = rng.standard_normal((3, 5, 33)).astype(np.float32)
    t = np.abs(rng.standard_normal(33)).astype(np.float32)
    got = _run_converter(x, t, constant_t=True)
    np.testing.assert_array_equal(got, threshold_reference(x, t))
    assert 0.2 < float(np.mean(got == 0)) < 0.9  # the case exercises both branches


_MODEL = """
<ir_version: 10, opset_import: ["" : 18, "pkg.graphopt" : 1]>
sparse_mlp (float[4, 16] x) => (float[4, 8] y) <float t = {0.6}> {
    w = Constant <value = float[16, 8] {%s}> ()
    xs = pkg.graphopt.ActivationThreshold(x, t)
    y = MatMul(xs, w)
}
"""


def test_tvm_llvm_build_matches_onnx_runtime():
    rng = np.random.default_rng(testing.SEED + 1)
    weights = ", ".join(f"{v:.6f}" for v in rng.standard_normal(16 * 8))
    model = ir.serde.deserialize_model(onnx.parser.parse_model(_MODEL % weights))
    ops.attach_functions(model)
    feeds = {"x": rng.standard_normal((4, 16)).astype(np.float32)}
    expected = testing.run_ort(model, feeds)[0]
    artifact = tvm_backend.compile(model, target="tvm-llvm", example_inputs=feeds)
    np.testing.assert_allclose(artifact.run(feeds)["y"], expected, rtol=1e-5, atol=1e-5)
