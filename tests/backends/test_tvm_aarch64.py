"""tvm-aarch64 end to end: cross-compiled builds run by the C++ runner under qemu-user.

Needs ``backends/tvm/edge/install_toolchain.sh`` (aarch64 g++, qemu-user, the aarch64 TVM runtime);
CI runs it, so these tests are skipped only where it has not been run. The host-runner tests need
just a C++ compiler and the TVM installed in this Python.
"""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

import graphopt
from graphopt.backends import ort as ort_backend
from graphopt.backends import tvm as tvm_backend
from graphopt.backends.tvm import edge
from graphopt.errors import UnsupportedError

ATOL = 1e-4  # FP32 vs ONNX Runtime on the host

missing = edge.toolchain_problems()
needs_toolchain = pytest.mark.skipif(bool(missing), reason=f"aarch64 toolchain missing ({'; '.join(missing)}): "
                                     "run backends/tvm/edge/install_toolchain.sh")
needs_host_cxx = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                                    reason="no host C++ compiler to build the runner")


def _ort(proto: onnx.ModelProto, feeds) -> dict[str, np.ndarray]:
    session = ort_backend.make_session(ir.serde.deserialize_model(proto), optimization="disable", threads=2)
    return ort_backend.run(session, feeds)


def _compile(proto: onnx.ModelProto, target: str, feeds, passes: str = "canonicalize", calib=None):
    result = graphopt.compile(proto, passes, targets=[target], calib=calib or [feeds], validate=False, bench_runs=0)
    return result.artifacts[target]


@pytest.fixture(scope="module")
def digits():
    from graphopt.models import digits_vit

    proto = digits_vit.build()
    feeds = digits_vit.example_inputs(batch=4)
    return proto, feeds, _ort(proto, feeds)


@pytest.fixture(scope="module")
def digits_aarch64(digits):
    if missing:
        pytest.skip("aarch64 toolchain missing: run backends/tvm/edge/install_toolchain.sh")
    proto, feeds, _ = digits
    return _compile(proto, "tvm-aarch64", feeds)


def _all_dtypes_model() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """x + 1 for every dtype the runner's .npy reader/writer handles, with 0-d to 3-d shapes."""
    cases = {"f32": (np.float32, [2, 3, 4]), "i64": (np.int64, [5]), "i32": (np.int32, [2, 2]),
             "i8": (np.int8, [3, 1]), "u8": (np.uint8, [])}
    rng = np.random.default_rng(0)
    inputs, outputs, nodes, inits, feeds = [], [], [], [], {}
    for name, (dtype, shape) in cases.items():
        elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        inputs.append(helper.make_tensor_value_info(f"x_{name}", elem, shape))
        outputs.append(helper.make_tensor_value_info(f"y_{name}", elem, shape))
        inits.append(onnx.numpy_helper.from_array(np.array(1, dtype=dtype), f"one_{name}"))
        nodes.append(helper.make_node("Add", [f"x_{name}", f"one_{name}"], [f"y_{name}"]))
        feeds[f"x_{name}"] = (rng.standard_normal(shape) * 50).astype(dtype)
    graph = helper.make_graph(nodes, "all_dtypes", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    return model, feeds


@pytest.fixture(scope="module")
def all_dtypes_aarch64():
    if missing:
        pytest.skip("aarch64 toolchain missing: run backends/tvm/edge/install_toolchain.sh")
    proto, feeds = _all_dtypes_model()
    return tvm_backend.compile(ir.serde.deserialize_model(proto), target="tvm-aarch64", example_inputs=feeds), feeds


def _expected_all_dtypes(feeds):
    return {f"y_{k[2:]}": (v + np.array(1, dtype=v.dtype)).astype(v.dtype) for k, v in feeds.items()}


def _assert_same(actual: dict, expected: dict, atol: float = 0.0) -> None:
    assert actual.keys() == expected.keys()
    for name, value in expected.items():
        assert actual[name].dtype == value.dtype and actual[name].shape == value.shape, name
        np.testing.assert_allclose(actual[name], value, rtol=0, atol=atol, err_msg=name)


# ---- the toolchain --------------------------------------------------------------------------


def test_missing_toolchain_is_one_clear_line(monkeypatch, tmp_path):
    monkeypatch.setenv("GRAPHOPT_AARCH64_HOME", str(tmp_path / "empty"))
    with pytest.raises(UnsupportedError) as info:
        edge.find_toolchain()
    message = str(info.value)
    assert "\n" not in message and "aarch64 TVM runtime" in message and "install_toolchain.sh" in message


# ---- under qemu: digits ViT FP32 (slow: compile, cross-link, emulate) and a tiny all-dtypes model --


@needs_toolchain
@pytest.mark.slow
def test_digits_vit_under_qemu_matches_onnxruntime(digits, digits_aarch64):
    _, feeds, expected = digits
    _assert_same(digits_aarch64.run(feeds), expected, atol=ATOL)


@needs_toolchain
@pytest.mark.slow
def test_saved_aarch64_artifact_reloads_and_runs(digits, digits_aarch64, tmp_path):
    _, feeds, expected = digits
    digits_aarch64.save(str(tmp_path))
    assert (tmp_path / "model.so").read_bytes()[:4] == b"\x7fELF"
    loaded = tvm_backend.load(str(tmp_path))
    assert loaded.spec.is_aarch64 and loaded.executable is None
    _assert_same(loaded.run(feeds), expected, atol=ATOL)


@needs_toolchain
def test_runner_reads_and_writes_every_dtype_under_qemu(all_dtypes_aarch64):
    artifact, feeds = all_dtypes_aarch64
    _assert_same(artifact.run(feeds), _expected_all_dtypes(feeds))


@needs_toolchain
def test_qemu_runner_reports_a_latency(all_dtypes_aarch64):
    artifact, feeds = all_dtypes_aarch64
    result = edge.run_aarch64(artifact, feeds, repeat=2)
    assert result.latency_ms is not None and result.latency_ms > 0
    assert len(result.outputs) == len(artifact.outputs)


# ---- the runner built for this machine ------------------------------------------------------


@needs_host_cxx
@pytest.mark.slow
def test_host_runner_matches_the_python_vm(digits):
    proto, feeds, _ = digits
    artifact = _compile(proto, "tvm-llvm", feeds)
    _assert_same(edge.run_with_host_runner(artifact, feeds), artifact.run(feeds), atol=1e-6)


@needs_host_cxx
def test_host_runner_reads_and_writes_every_dtype():
    proto, feeds = _all_dtypes_model()
    artifact = tvm_backend.compile(ir.serde.deserialize_model(proto), target="tvm-llvm", example_inputs=feeds)
    _assert_same(edge.run_with_host_runner(artifact, feeds), _expected_all_dtypes(feeds))


# ---- whole models (slow) --------------------------------------------------------------------


@needs_toolchain
@pytest.mark.slow
def test_digits_vit_ivit_under_qemu_is_bit_exact_with_the_host():
    pytest.importorskip("graphopt.backends.tvm.kernels", reason="integer TVM kernels not available")
    from graphopt.models import digits_vit

    proto = digits_vit.build()
    x_train, _, x_test, _ = digits_vit.dataset()
    feeds = {"pixels": x_test[:4]}
    calib = [feeds] + [{"pixels": x_train[i:i + 32]} for i in range(0, 256, 32)]  # the first sample fixes the shape
    result = graphopt.compile(proto, "ivit", targets=["tvm-aarch64", "tvm-llvm"], calib=calib, validate=False, bench_runs=0)
    host = result.artifacts["tvm-llvm"].run(feeds)
    _assert_same(result.artifacts["tvm-aarch64"].run(feeds), host)


@needs_toolchain
@pytest.mark.slow
def test_minilm_fp32_under_qemu_matches_onnxruntime():
    """The whole 6-layer MiniLM (dynamo export, seq 128) under qemu: about 1.5 min here with the CPU
    schedules (compile about 15 s, qemu run about 70 s)."""
    from graphopt.models import minilm

    proto = minilm.build()
    feeds = minilm.example_inputs()
    artifact = _compile(proto, "tvm-aarch64", feeds)
    _assert_same(edge.run_with_qemu(artifact, feeds, timeout=600), _ort(proto, feeds), atol=ATOL)
