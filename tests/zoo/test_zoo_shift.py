"""shift-linear on every zoo model it applies to (one test id per model, small dims).

Each built model is canonicalized (QDQ forms: their activation fake-quantization dropped first, as
``ivit`` does), then ``shift-linear`` runs on two seeded samples: it fires (every MatMul/Gemm and
Conv with a constant float32 weight, int8 weights dequantized in the graph included; convolution-only
backbones become ShiftConvs), the result passes the full ONNX checker, and ONNX Runtime loads and
runs it at all four optimization levels with finite outputs. float16 models (ORT's converter)
decline: ShiftMatMul / ShiftConv take float32 activations.
"""

from __future__ import annotations

import onnx_ir as ir
import pytest

from graphopt.models import zoo
from graphopt.pipeline import run_pipeline

ENTRIES = zoo.entries()
FLOAT16 = "fp16"  # the form whose activations are float16: declined

# (bert-ort-opt, whose canonicalized form ORT fails to load at level basic and up, loads once its MatMuls are
# ShiftMatMuls: ORT's MatMulAddFusion no longer makes the colliding initializer; tests/zoo/test_zoo.py)


@pytest.mark.parametrize("name", list(ENTRIES))
def test_shift_linear_on_zoo_model(name, canonical_zoo, runs_everywhere):
    entry = ENTRIES[name]
    model, samples = canonical_zoo(name, 2)
    record = run_pipeline(model, "shift-linear", samples=samples)[-1]
    if entry.form == FLOAT16:
        assert not record.modified and any("not float32" in d for d in record.declines), record.declines
        return
    assert record.modified, f"shift-linear did not fire on {name}; declines: {record.declines}"
    assert not any(n.op_type in ("MatMul", "Gemm", "Conv") and n.domain == "" and n.inputs[1] is not None
                   and n.inputs[1].const_value is not None and n.inputs[1].dtype == ir.DataType.FLOAT
                   for n in model.graph), "a MatMul/Gemm/Conv with a float32 initializer weight was left"
    runs_everywhere(model, samples[0], name)
