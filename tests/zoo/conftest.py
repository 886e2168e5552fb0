"""Shared by the technique passes' zoo tests: each zoo model as those passes meet it."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from bench import zoo as matrix
from graphopt import testing
from graphopt.backends import ort as ort_backend
from graphopt.models import zoo
from graphopt.pipeline import run_pipeline


@pytest.fixture
def canonical_zoo():
    """``get(name, count)``: the zoo model canonicalized (QDQ forms: activation fake quantization
    dropped first, as ``ivit`` does) with ``count`` seeded samples; an exporter limit skips."""

    def get(name: str, count: int = 2) -> tuple[ir.Model, list[dict]]:
        entry = zoo.entries()[name]
        try:
            proto = entry.build()
        except zoo.ExportUnsupported as e:
            pytest.skip(f"exporter limit, recorded in the zoo table: {e}")
        model = ir.serde.deserialize_model(proto)
        samples = matrix.samples(entry, count)
        run_pipeline(model, ("drop-fake-quant," if entry.form == "qdq" else "") + "canonicalize", samples=samples)
        return model, samples

    return get


@pytest.fixture
def runs_everywhere():
    """``check(model, sample, label)``: the full ONNX checker passes, and ONNX Runtime loads and runs
    the model at every optimization level with finite float outputs."""

    def check(model: ir.Model, sample: dict, label: str = "") -> None:
        testing.assert_valid(model)
        for level in ort_backend.OPTIMIZATION_LEVELS:
            outputs = ort_backend.run(ort_backend.make_session(model.clone(), optimization=level, threads=1), sample)
            assert all(np.isfinite(v).all() for v in outputs.values() if v.dtype.kind == "f"), (label, level)

    return check
