"""Where torch and ONNX mean different things, ``to_torch`` computes ONNX's meaning: one small
graph per difference, against ONNX Runtime, bit-exact (the ONNX node cases cover the rest under
``-m slow``: tests/core/test_to_torch_conformance.py)."""

from __future__ import annotations

import numpy as np
import onnx.parser
import pytest

import graphopt
from graphopt import testing

torch = pytest.importorskip("torch")

HEADER = '<ir_version: 10, opset_import: ["" : 21]>\n'
CASES = {
    # integer Div truncates toward zero; Mod fmod=0 takes the divisor's sign, fmod=1 the dividend's
    "int_div_mod": ("g (int64[6] a, int64[6] b) => (int64[6] q, int64[6] m, int64[6] f) "
                    "{ q = Div (a, b) m = Mod (a, b) f = Mod <fmod = 1> (a, b) }",
                    {"a": np.array([7, -7, 7, -7, 0, -1]), "b": np.array([2, 2, -2, -2, 3, 4])}),
    # Pow keeps the base's type; Expand broadcasts both ways
    "pow_expand": ("g (int32[3] a, int64[3] e, float[3, 1] x, int64[2] s) => (int32[3] p, float[3, 4] y) "
                   "{ p = Pow (a, e) y = Expand (x, s) }",
                   {"a": np.array([2, -3, 5], np.int32), "e": np.array([3, 2, 0]), "x": np.ones((3, 1), np.float32),
                    "s": np.array([1, 4])}),
    # Slice with a negative step and clamped bounds; Gather with negative indices
    "slice_gather": ("g (float[5, 4] x, int64[2] i) => (float[3, 4] s, float[2, 4] r) {"
                     " st = Constant <value = int64[1] {-1}> () en = Constant <value = int64[1] {-9}> ()"
                     " ax = Constant <value = int64[1] {0}> () sp = Constant <value = int64[1] {-2}> ()"
                     " s = Slice (x, st, en, ax, sp) r = Gather (x, i) }",
                    {"x": np.arange(20, dtype=np.float32).reshape(5, 4), "i": np.array([-1, 2])}),
    # per-channel QuantizeLinear (half to even, saturating) and MatMulInteger with zero points
    "quantize_matmul": ("g (float[2, 3] x, float[3] s, int8[3] z, uint8[2, 3] a, int8[3, 2] b, uint8 za, int8[2] zb)"
                        " => (int8[2, 3] q, int32[2, 2] y) { q = QuantizeLinear <axis = 1> (x, s, z)"
                        " y = MatMulInteger (a, b, za, zb) }",
                        {"x": np.array([[0.5, 1.5, -2.5], [300.0, -300.0, 0.25]], np.float32),
                         "s": np.array([1.0, 1.0, 0.5], np.float32), "z": np.array([0, 3, -1], np.int8),
                         "a": np.array([[255, 0, 128], [7, 200, 13]], np.uint8),
                         "b": np.array([[-128, 127], [5, -6], [100, -100]], np.int8),
                         "za": np.array(128, np.uint8), "zb": np.array([1, -2], np.int8)}),
    # edge padding on the leading axes, which torch's F.pad cannot replicate
    "pad_edge": ("g (float[2, 3] x, int64[4] p) => (float[5, 4] y) { y = Pad <mode = \"edge\"> (x, p) }",
                 {"x": np.arange(6, dtype=np.float32).reshape(2, 3), "p": np.array([1, 0, 2, 1])}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_onnx_meaning_wins(name):
    text, feeds = CASES[name]
    proto = onnx.parser.parse_model(HEADER + text)
    expected = testing.run_ort(proto, feeds)
    got = graphopt.to_torch(proto)(**feeds)
    for e, g in zip(expected, got):
        assert g.numpy().dtype == e.dtype
        np.testing.assert_array_equal(g.numpy(), e)
