"""Failures the differential fuzzer (tests/fuzz/test_differential.py, bench.fuzz_differential) found.

Each is the smallest graph that showed it, run through the pass the way the fuzzer does
(``graphopt.fuzzing.differential.check_pass``: declines, or valid + same interface + same outputs).
"""

from __future__ import annotations

import numpy as np
import onnx.parser

from graphopt.fuzzing.differential import check_pass
from graphopt.fuzzing.graphs import Case


def _case(text: str, **shapes) -> Case:
    rng = np.random.default_rng(0)
    model = onnx.parser.parse_model(text)
    return Case(model, {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}, "regression")


def test_shiftmax_on_opset_13_model_is_valid_or_declined():
    """Shiftmax's function body calls ReduceMax with axes as an input (opset 18); attached to an
    opset-13 model it was checked at opset 13 and the rewritten model failed the checker."""
    case = _case(
        """<ir_version: 8, opset_import: ["" : 13]>
        g (float[2, 4] x) => (float[2, 4] y) { y = Softmax <axis = -1> (x) }""",
        x=(2, 4),
    )
    outcome = check_pass(case, "shiftmax")
    assert outcome.status in ("fired", "declined"), outcome.detail


def test_shiftsilu_on_opset_13_model_is_valid_or_declined():
    """Same for ShiftGelu's body (row_max=1 reads the row's ReduceMax), made by shiftsilu."""
    case = _case(
        """<ir_version: 8, opset_import: ["" : 13]>
        g (float[2, 4] x) => (float[2, 4] y) { s = Sigmoid (x)  y = Mul (x, s) }""",
        x=(2, 4),
    )
    outcome = check_pass(case, "shiftsilu")
    assert outcome.status in ("fired", "declined"), outcome.detail


def test_teal_on_opset_14_model_fires_and_loads():
    """ActivationThreshold's body made its zero with CastLike (opset 15): on an opset-14 model the
    calibration probe of teal/rsparse did not load in ONNX Runtime."""
    case = _case(
        """<ir_version: 8, opset_import: ["" : 14]>
        g (float[3, 4] x) => (float[3, 4] y) <float[4, 4] w = {1., 0., 0., 0., 0., 1., 0., 0., 0., 0., 1., 0., 0., 0., 0., 1.}> {
            h = Add (x, x)  m = MatMul (h, w)  y = Relu (m) }""",
        x=(3, 4),
    )
    for name in ("teal", "rsparse"):
        outcome = check_pass(case, name)
        assert outcome.status == "fired", (name, outcome.detail)


def test_instance_norm_keeps_a_symbolic_output_dim():
    """The per-channel Mul [C, 1] made shape inference narrow the graph output's symbolic channel
    dim to C: the model's interface changed. A symbolic channel dim is now declined."""
    case = _case(
        """<ir_version: 8, opset_import: ["" : 20]>
        g (float[N, C, 4] x) => (float[N, C, 4] y) <float[3] s = {0.5, 1., 1.5}, float[3] b = {-0.2, 0., 0.2}> {
            y = InstanceNormalization (x, s, b) }""",
        x=(2, 3, 4),
    )
    outcome = check_pass(case, "instance-norm")
    assert outcome.status == "declined", outcome.detail


def test_chess_with_a_constant_second_factor():
    """Mul(silu(g), c) with c a constant: chess asked the calibration for c's statistics (KeyError)."""
    case = _case(
        """<ir_version: 8, opset_import: ["" : 17]>
        g (float[3, 4] x) => (float[3, 4] y) <float[4] c = {1., 2., 3., 4.}, float[4, 4] w = {1., 0., 0., 0., 0., 1., 0., 0., 0., 0., 1., 0., 0., 0., 0., 1.}> {
            s = Sigmoid (x)  a = Mul (x, s)  m = Mul (a, c)  y = MatMul (m, w) }""",
        x=(3, 4),
    )
    outcome = check_pass(case, "chess")
    assert outcome.status in ("fired", "declined"), outcome.detail
