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
