"""Test helpers shared by graphopt's tests and by users testing their own passes.

The three checks every rewrite gets: structure (op types), numerics (outputs vs the original
through ONNX Runtime with its graph optimizations off, on seeded inputs), validity
(``onnx.checker`` full check).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from graphopt import data, ops, storage

__all__ = ["SEED", "assert_numerically_equal", "assert_valid", "op_types", "run_ort"]

SEED = 20250621


def op_types(model: ir.Model | onnx.ModelProto) -> list[str]:
    graph = model.graph
    return [n.op_type for n in graph] if isinstance(model, ir.Model) else [n.op_type for n in graph.node]


def _proto(model: ir.Model | onnx.ModelProto) -> onnx.ModelProto:
    if isinstance(model, ir.Model):
        ops.attach_functions(model)
        return storage.inline_proto(model)
    return model


def assert_valid(model: ir.Model | onnx.ModelProto) -> None:
    onnx.checker.check_model(_proto(model), full_check=True)


def run_ort(model: ir.Model | onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(_proto(model).SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, dict(feeds))


def assert_numerically_equal(
    original: ir.Model | onnx.ModelProto,
    rewritten: ir.Model | onnx.ModelProto,
    feeds: Mapping[str, np.ndarray] | None = None,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-6,
) -> None:
    if feeds is None:
        model = original if isinstance(original, ir.Model) else ir.serde.deserialize_model(original)
        feeds = data.synthetic_inputs(model, SEED)
    expected = run_ort(original, feeds)
    actual = run_ort(rewritten, feeds)
    assert len(expected) == len(actual)
    for e, a in zip(expected, actual):
        np.testing.assert_allclose(a, e, rtol=rtol, atol=atol)
