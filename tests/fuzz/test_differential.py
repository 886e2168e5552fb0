"""Differential testing of every pass on random valid graphs (issue 14; the long run is
``python -m bench.fuzz_differential``).

Graphs come from ``graphopt.fuzzing.graphs``: the patterns the passes match (Erf/Tanh GELU,
decomposed LayerNorm/RMSNorm, attention, SiLU, MatMul/Gemm/Conv) and their near misses (perturbed
constants, swapped operands, inner values that are outputs), float32/16/64, opsets 13-23,
symbolic dims. Per pass: it declines, or the result is checker-valid, keeps the interface and
computes the same outputs on ONNX Runtime (optimizations off); integer passes within a loose
cosine bound. Failures found became ``tests/fuzz/test_regressions.py``.
"""

from __future__ import annotations

import logging

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from graphopt.fuzzing.differential import ALL_PASSES, APPROXIMATE_PASSES, check_pass
from graphopt.fuzzing.graphs import build_case, hypothesis_chooser

FLOAT_EXAMPLES = 40
APPROXIMATE_EXAMPLES = 20


@pytest.mark.parametrize("name", list(ALL_PASSES))
def test_pass_declines_or_preserves_outputs(name, caplog):
    caplog.set_level(logging.ERROR)  # calibrating passes warn about synthetic data on every case
    examples = APPROXIMATE_EXAMPLES if name in APPROXIMATE_PASSES else FLOAT_EXAMPLES

    @settings(max_examples=examples, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def run(data):
        case = build_case(hypothesis_chooser(data))
        assume(case is not None)
        outcome = check_pass(case, name)
        assume(outcome.status != "skipped")
        assert outcome.status != "failed", f"{case.description}: {outcome.detail}"

    run()
