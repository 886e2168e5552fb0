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


SAMPLES = 2  # seeded samples kept per model; callers take the first ``count``


@pytest.fixture(scope="session")
def canonical_zoo():
    """``get(name, count)``: a copy of the zoo model canonicalized (QDQ forms: activation fake
    quantization dropped first, as ``ivit`` does) and ``count`` seeded samples; an exporter limit
    skips. Canonicalized once per session: every technique pass's zoo test starts from it."""
    built: dict[str, tuple[ir.Model, list[dict]] | str] = {}

    def get(name: str, count: int = SAMPLES) -> tuple[ir.Model, list[dict]]:
        if name not in built:
            entry = zoo.entries()[name]
            try:
                model = ir.serde.deserialize_model(entry.build())
            except zoo.ExportUnsupported as e:
                built[name] = f"exporter limit, recorded in the zoo table: {e}"
            else:
                samples = matrix.samples(entry, SAMPLES)
                run_pipeline(model, ("drop-fake-quant," if entry.form == "qdq" else "") + "canonicalize", samples=samples)
                built[name] = (model, samples)
        if isinstance(built[name], str):
            pytest.skip(built[name])
        model, samples = built[name]
        return model.clone(), samples[:count]

    return get


@pytest.fixture(scope="session")
def runs_everywhere():
    """``check(model, sample, label)``: the full ONNX checker passes, and ONNX Runtime loads and runs
    the model at every optimization level with finite float outputs."""

    def check(model: ir.Model, sample: dict, label: str = "") -> None:
        testing.assert_valid(model)
        for level in ort_backend.OPTIMIZATION_LEVELS:
            outputs = ort_backend.run(ort_backend.make_session(model.clone(), optimization=level, threads=1), sample)
            assert all(np.isfinite(v).all() for v in outputs.values() if v.dtype.kind == "f"), (label, level)

    return check
