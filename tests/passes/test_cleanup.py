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


def _pad_conv(mode: str = "constant", pads=(0, 0, 1, 2, 0, 0, 1, 0), value: str | None = None, conv: str = "pads = [1, 0, 0, 1]") -> ir.Model:
    value_input = f", {value}" if value is not None else ""
    text = f"""<ir_version: 8, opset_import: ["" : 17]>
g (float[1, 3, 9, 8] x) => (float[1, 4, 5, 5] y) <int64[8] pads = {{{", ".join(map(str, pads))}}}, float zero = {{0.0}}, float one = {{1.0}}> {{
    p = Pad <mode = "{mode}"> (x, pads{value_input})
    w = Constant <value = float[4, 3, 3, 3] {{{", ".join(str((i % 7) / 7 - 0.4) for i in range(108))}}}> ()
    y = Conv <{conv}, strides = [2, 2]> (p, w)
}}"""
    return ir.serde.deserialize_model(onnx.parser.parse_model(text))


def _folded_pads(model: ir.Model):
    (conv,) = [n for n in model.graph if n.op_type == "Conv"]
    return list(conv.attributes["pads"].value)


def test_zero_pad_of_spatial_axes_becomes_the_convs_padding():
    for value in (None, "zero"):
        original = _pad_conv(value=value)
        work = original.clone()
        record = run_pipeline(work, "cleanup")[0]
        assert testing.op_types(work) == ["Conv"] and record.rewrites["pad-into-conv"] == 1
        assert _folded_pads(work) == [1 + 1, 0 + 2, 0 + 1, 1 + 0]  # [top, left, bottom, right]
        testing.assert_valid(work)
        x = np.random.default_rng(testing.SEED).standard_normal((1, 3, 9, 8)).astype(np.float32)
        np.testing.assert_allclose(testing.run_ort(work, {"x": x})[0], testing.run_ort(original, {"x": x})[0], rtol=1e-6, atol=1e-6)


def test_pads_that_are_not_spatial_zeros_stay():
    kept = [_pad_conv(mode="reflect"), _pad_conv(value="one"), _pad_conv(pads=(0, 0, 1, -1, 0, 0, 1, 0)),
            _pad_conv(conv='auto_pad = "SAME_UPPER"')]
    for model in kept:
        run_pipeline(model, "cleanup")
        assert testing.op_types(model) == ["Pad", "Conv"]
