"""cleanup: constant folding and dead-code removal that keep outputs (onnxscript's optimizer, bounded)."""

from __future__ import annotations

import numpy as np
import onnx.parser
import onnx_ir as ir

from graphopt import testing
from graphopt.pipeline import run_pipeline

FOLDABLE = """<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 3] x) => (float[2, 3] y) <float[3] a = {1, 2, 3}, float[3] b = {0.5, 0.5, 0.5}> {
    c = Mul (a, b)
    dead = Neg (x)
    i = Identity (x)
    y = Add (i, c)
}"""


def test_folds_constants_and_drops_dead_nodes():
    original = onnx.parser.parse_model(FOLDABLE)
    work = ir.serde.deserialize_model(original)
    record = run_pipeline(work, "cleanup")[0]
    assert record.modified and testing.op_types(work) == ["Add"]
    testing.assert_valid(work)
    x = np.random.default_rng(testing.SEED).standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_array_equal(testing.run_ort(work, {"x": x})[0], testing.run_ort(original, {"x": x})[0])


def test_fold_limit_keeps_large_constants_unfolded():
    work = ir.serde.deserialize_model(onnx.parser.parse_model(FOLDABLE))
    run_pipeline(work, "cleanup(fold_limit=1)")
    assert "Mul" in testing.op_types(work)  # a 3-element result is above the limit


def test_a_clean_graph_is_not_modified():
    work = ir.serde.deserialize_model(onnx.parser.parse_model(FOLDABLE))
    run_pipeline(work, "cleanup")
    assert not run_pipeline(work, "cleanup")[0].modified
