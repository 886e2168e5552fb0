"""Backends and artifacts are typed: both backends satisfy ``protocol.Backend``, their artifacts
``protocol.Artifact``; options are explicit per backend and an option a backend lacks is an error."""

from __future__ import annotations

import numpy as np
import onnx.parser
import onnx_ir as ir
import pytest

from graphopt import backends
from graphopt.backends import ort
from graphopt.backends.protocol import Artifact, Backend, BuildOptions
from graphopt.pipeline import parse_pipeline
from graphopt.stages import Settings

MLP = """
<ir_version: 10, opset_import: ["" : 18]>
g (float[2, 4] x) => (float[2, 3] y) <float[4, 3] w = {0.1, -0.2, 0.3, 0.4, 0.5, -0.6, 0.7, 0.8, -0.9, 1.0, 1.1, 1.2}> {
    y = MatMul (x, w)
}"""


def _model(batch: str = "2") -> ir.Model:
    return ir.serde.deserialize_model(onnx.parser.parse_model(MLP.replace("float[2, 4] x", f"float[{batch}, 4] x")))


def _settings(**values) -> Settings:
    return Settings(pipeline=parse_pipeline("cleanup"), targets=("onnx",), **values)


def test_onnx_backend_and_artifact_satisfy_the_protocols():
    backend = backends.get_backend("onnx")
    assert isinstance(backend, Backend) and issubclass(backend.Options, BuildOptions)
    artifact = backend.compile(_model(), target="onnx", options=backend.Options(threads=1))
    assert isinstance(artifact, Artifact) and artifact.can_time and artifact.details == {}
    x = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(artifact.run({"x": x})["y"], x @ np.asarray(_model().graph.initializers["w"].const_value.numpy()))


def test_an_option_the_backend_lacks_is_an_error_not_dropped():
    with pytest.raises(TypeError, match="tune_budget"):
        ort.compile(_model(), tune_budget=10)


def test_options_come_from_the_run_settings():
    options = ort.Options.from_settings(_settings(threads=3, ort_optimization="basic"))
    assert (options.threads, options.optimization, options.progress) == (3, "basic", False)


@pytest.mark.slow
def test_tvm_backend_and_artifact_satisfy_the_protocols():
    tvm_backend = backends.get_backend("tvm-llvm")
    assert isinstance(tvm_backend, Backend)
    options = tvm_backend.Options.from_settings(_settings(threads=1, tune_budget=0), example_inputs={"x": np.ones((2, 4), np.float32)})
    assert (options.threads, options.tune_budget, options.tune_database) == (1, 0, None)
    artifact = tvm_backend.compile(_model(batch="N"), target="tvm-llvm", options=options)
    assert isinstance(artifact, Artifact) and artifact.can_time
    assert artifact.details["prepare"][0] == {"pass": "static-shapes", "rewrites": {"inputs-pinned": 1}, "notes": []}
    with pytest.raises(TypeError, match="optimization"):
        tvm_backend.compile(_model(), target="tvm-llvm", optimization="all")
