"""Run one pass on one generated graph the way users do (the pipeline API) and judge the result.

The property: the pass declines, or the rewritten model passes the full onnx checker, keeps the
interface (input/output names, order, dtypes, shapes) and computes the same outputs as the
original on ONNX Runtime with optimizations off (per-dtype tolerances; integer and activation-sparsity
passes: a loose cosine bound, they trade accuracy by design). Nothing may raise.
"""

from __future__ import annotations

import dataclasses
import traceback

import numpy as np
import onnx
import onnx_ir as ir

from graphopt import testing
from graphopt.pipeline import run_pipeline

# pass (what the report names) -> the pipeline that runs it (integer passes need their float op first)
FLOAT_PASSES = {
    "canonicalize": "canonicalize",
    "cleanup": "cleanup",
    "opset-upgrade": "opset-upgrade",
    "fold-static-values": "fold-static-values",
    "drop-fake-quant": "drop-fake-quant",
    "gelu": "gelu",
    "layer-norm": "layer-norm",
    "rms-norm": "rms-norm",
    "silu": "silu",
    "attention": "attention",
    "instance-norm": "instance-norm",
    "float32-islands": "float32-islands",
}
INTEGER_PASSES = {
    "int8-linear": "int8-linear",
    "shiftmax": "shiftmax",
    "shiftgelu": "gelu,shiftgelu",
    "shiftsilu": "silu,shiftsilu",
    "ilayernorm": "layer-norm,ilayernorm",
    "irmsnorm": "rms-norm,irmsnorm",
    "imul": "imul",
    "ivit": "ivit",
    "shift-integer": "ivit-shift",
}
# passes that change outputs by design (activation sparsity): judged like the integer passes
LOSSY_PASSES = {
    "cats": "canonicalize,cats(sparsity=0.3)",
    "teal": "teal(sparsity=0.3)",
    "chess": "canonicalize,chess(sparsity=0.3)",
    "rsparse": "rsparse(sparsity=0.3)",
    "relufy": "canonicalize,relufy",
    "shift-linear": "shift-linear",
    "linear-attention": "canonicalize,linear-attention",
    "sigmoid-attention": "canonicalize,sigmoid-attention",
    "softplus-attention": "canonicalize,softplus-attention",
    "binary-attention": "canonicalize,binary-attention(steps=5)",
}
APPROXIMATE_PASSES = {**INTEGER_PASSES, **LOSSY_PASSES}
# these swap the function itself (relufy the activation, the attention forms softmax; fine-tuning recovers
# them): no output bound, the rest of the property holds
UNBOUNDED_PASSES = ("relufy", "linear-attention", "sigmoid-attention", "softplus-attention", "binary-attention")
ALL_PASSES = {**FLOAT_PASSES, **APPROXIMATE_PASSES}

# float64: passes accept constants within their rtol (1e-4 relative, gelu), and the generator
# perturbs some by 1e-6, so a fused float64 GELU differs by ~1e-6 by design (not by ulps)
TOLERANCES = {"float64": (1e-5, 1e-5), "float32": (1e-4, 1e-4), "float16": (2e-2, 2e-2)}  # (atol, rtol)
APPROXIMATE_MIN_COSINE = 0.5


@dataclasses.dataclass
class Outcome:
    status: str  # "fired" | "declined" | "failed" | "skipped" (ORT cannot run the original)
    detail: str = ""


def _interface(model: onnx.ModelProto) -> list:
    def row(v):
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else d.dim_param or None for d in t.shape.dim] if t.HasField("shape") else None
        return (v.name, t.elem_type, dims)

    return [[row(v) for v in model.graph.input], [row(v) for v in model.graph.output]]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return 1.0 if denom == 0 and np.allclose(a, b) else float(a @ b / denom) if denom else 0.0


def check_pass(case, name: str) -> Outcome:
    pipeline = ALL_PASSES[name]
    try:
        expected = testing.run_ort(case.model, case.feeds)
    except Exception:  # noqa: BLE001 — an op/dtype ORT has no kernel for: not a pass's case
        return Outcome("skipped")
    model = ir.serde.deserialize_model(case.model)
    samples = [case.feeds, {k: v * 0.5 for k, v in case.feeds.items()}] if name in APPROXIMATE_PASSES else None
    try:
        records = run_pipeline(model, pipeline, samples=samples)
    except Exception:  # noqa: BLE001 — any escape is the finding
        return Outcome("failed", "raised: " + traceback.format_exc(limit=-3))
    last = pipeline.split(",")[-1].split("(")[0]
    fired = any(r.modified for r in records if r.name == last or pipeline == r.name or name in ("canonicalize", "ivit"))
    if not fired:
        return Outcome("declined")
    try:
        testing.assert_valid(model)
        proto = testing._proto(model)  # noqa: SLF001 — the proto ORT and the checker see
    except Exception as e:  # noqa: BLE001
        return Outcome("failed", f"invalid model: {type(e).__name__}: {str(e)[:400]}")
    if _interface(proto) != _interface(case.model):
        return Outcome("failed", f"interface changed: {_interface(case.model)} -> {_interface(proto)}")
    try:
        actual = testing.run_ort(proto, case.feeds)
    except Exception as e:  # noqa: BLE001
        return Outcome("failed", f"ORT cannot run the rewritten model: {str(e)[:400]}")
    atol, rtol = TOLERANCES[case.dtype]
    for i, (e, a) in enumerate(zip(expected, actual)):
        if e.shape != a.shape or e.dtype != a.dtype:
            return Outcome("failed", f"output {i}: {e.dtype}{e.shape} became {a.dtype}{a.shape}")
        if name in UNBOUNDED_PASSES:
            continue
        if name in APPROXIMATE_PASSES:
            cos = _cosine(e, a)
            if not cos >= APPROXIMATE_MIN_COSINE and np.abs(e).max() > 1e-3:
                return Outcome("failed", f"output {i}: cosine {cos:.4f} < {APPROXIMATE_MIN_COSINE}")
        elif not np.allclose(a, e, atol=atol, rtol=rtol, equal_nan=True):
            err = float(np.nanmax(np.abs(a.astype(np.float64) - e)))
            return Outcome("failed", f"output {i}: max abs error {err:.3g} (atol {atol}, rtol {rtol})")
    return Outcome("fired")
