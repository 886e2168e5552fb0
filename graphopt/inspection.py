"""`graphopt inspect` and `graphopt explain`: what a model is made of, and what passes would do.

Pattern detection runs the `canonicalize` preset on a copy and reads the canonical nodes it
produced (attention blocks, GELU / SwiGLU MLPs, LayerNorm / RMSNorm), so inspect and compile
always agree on what they see.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Any

import onnx_ir as ir

from graphopt import capture, data, pipeline, rewrite
from graphopt.report import model_summary, op_histogram

__all__ = ["explain", "inspect", "integer_only", "render"]

_MIN_NEAR_MISS_NODES = 2  # a one-node "match" is just an op type in common, not a near miss
_MAX_NEAR_MISSES = 5

_PATTERNS = {
    "LayerNormalization": "LayerNorm",
    "RMSNormalization": "RMSNorm",
    "Gelu": "GELU",
}


def _load(model_path: str, input_shapes: Sequence[str] | None) -> ir.Model:
    from graphopt.api import _apply_input_shapes  # noqa: PLC0415

    model = capture.load(model_path)
    if input_shapes:
        _apply_input_shapes(model, data.parse_shape_overrides(input_shapes))
    return model


def _detect(model: ir.Model) -> dict[str, int]:
    canonical = model.clone()
    pipeline.run_pipeline(canonical, "canonicalize")
    found: collections.Counter = collections.Counter()
    for node in ir.traversal.RecursiveGraphIterator(canonical.graph):
        if node.op_type in _PATTERNS:
            found[_PATTERNS[node.op_type]] += 1
        elif node.domain == "pkg.graphopt" and "Attention" in node.op_type:
            found["attention blocks"] += 1
        elif node.domain == "pkg.graphopt" and "Silu" in node.op_type or node.op_type == "Swish":
            gated = any(u.node.op_type == "Mul" for o in node.outputs for u in o.uses())
            found["SwiGLU (gated SiLU)" if gated else "SiLU"] += 1
    return dict(sorted(found.items()))


def inspect(model_path: str, input_shapes: Sequence[str] | None = None) -> dict[str, Any]:
    model = _load(model_path, input_shapes)
    return {
        "model": model_path,
        "inputs": [{"name": s.name, "dtype": str(s.dtype), "shape": list(s.shape) if s.shape is not None else None} for s in data.input_specs(model)],
        "outputs": [{"name": v.name, "dtype": str(v.dtype.numpy()) if v.dtype else None, "shape": [d if isinstance(d, int) else str(d) for d in v.shape] if v.shape is not None else None} for v in model.graph.outputs],
        "summary": model_summary(model),
        "ops": op_histogram(model),
        "patterns": _detect(model),
    }


def integer_only(model_path: str, input_shapes: Sequence[str] | None = None):
    """`inspect --integer-only`: the integer-region verdict (``graphopt.integer_region.verify``)."""
    from graphopt import integer_region  # noqa: PLC0415

    return integer_region.verify(_load(model_path, input_shapes))


_CONTROL = {c: f"\\x{c:02x}" for c in [*range(32), 127]} | {10: "\\n", 13: "\\r", 9: "\\t"}


def _text(value: Any, style: str = ""):
    """User text (names, paths) for the console as a rich ``Text``: never parsed for markup or
    emoji codes, and control characters shown as escapes so a newline cannot split a table row."""
    from rich.text import Text  # noqa: PLC0415

    return Text(str(value).translate(_CONTROL), style=style)


def render(info: dict[str, Any], console) -> None:
    from rich.table import Table  # noqa: PLC0415

    summary = info["summary"]
    header = _text(info["model"], "bold")
    header.append(_text(f": {summary['nodes']} nodes, {summary['parameters']:,} parameters "
                        f"({summary['weight_bytes'] / 1e6:.2f} MB), opsets {summary['opsets']}"))
    console.print(header)
    io = Table(title="inputs / outputs", title_justify="left")
    for column in ("", "name", "dtype", "shape"):
        io.add_column(column)
    for kind in ("inputs", "outputs"):
        for v in info[kind]:
            io.add_row(kind[:-1], _text(v["name"]), _text(v["dtype"]), _text(v["shape"]))
    console.print(io)
    ops = Table(title="ops", title_justify="left")
    ops.add_column("op")
    ops.add_column("count", justify="right")
    for op, count in sorted(info["ops"].items(), key=lambda kv: -kv[1]):
        ops.add_row(_text(op), str(count))
    console.print(ops)
    patterns = ", ".join(f"{k}: {v}" for k, v in info["patterns"].items()) or "none"
    console.print(_text(f"detected patterns: {patterns}"))


def explain(model_path: str, passes: str, input_shapes: Sequence[str] | None = None, calib: Any = None) -> list[str]:
    """Run ``passes`` on a copy; per pass: what it rewrote, what its checks declined, near misses.

    Calibrating passes compute their statistics on ``calib`` (any form ``data.load_samples``
    takes, as for compile); without it on seeded synthetic inputs, which the first line says once.
    """
    model = _load(model_path, input_shapes)
    lines = []
    pipeline.infer_shapes(model)
    steps = pipeline.parse_pipeline(passes).expand()
    if calib is not None:
        samples = data.load_samples(calib, model)
    else:
        calibrating = dict.fromkeys(spec.name for spec, options in steps if getattr(spec.cls(options), "needs_calibration", False))
        samples = [data.synthetic_inputs(model, seed) for seed in range(4)] if calibrating else None
        if calibrating:
            lines.append(f"note: no calibration data: {', '.join(calibrating)} calibrate on seeded synthetic inputs, "
                         "so their scales and thresholds are not your data's (pass --calib DATA)")
    for spec, options in steps:
        the_pass = spec.cls(options)
        # every pass that is made of rules shows its near misses (RulePass, and shiftmax/attention,
        # which run their rules themselves); passes without rules (cleanup, integer-chain) have none
        rules = getattr(the_pass, "rules", None)
        near = rewrite.explain_rules(model, rules(), near_misses=True) if callable(rules) else []
        records = pipeline.run_pipeline(model, pipeline.Pipeline((pipeline.Step(spec.name, tuple((k, str(v)) for k, v in options.__dict__.items())),)),
                                        samples=samples)
        record = records[0]
        done = ", ".join(f"{k} x{v}" for k, v in record.rewrites.items()) or "nothing"
        lines.append(f"{spec.name}: rewrote {done}")
        for decline in record.declines:
            lines.append(f"  declined: {decline}")
        if spec.name == "integer-chain":  # the ops that still stop the integer region, with what to do
            from graphopt import integer_region  # noqa: PLC0415

            verdict = integer_region.verify(model)
            lines += [f"  declined: {stop}" for stop in (verdict.stops if verdict.has_region and not verdict.ok else ())]
        shown = [m for m in near if m.matched >= _MIN_NEAR_MISS_NODES and not record.rewrites.get(m.rule)]
        for miss in shown[:_MAX_NEAR_MISSES]:
            lines.append(f"  {miss}")
        if len(shown) > _MAX_NEAR_MISSES:
            lines.append(f"  ... {len(shown) - _MAX_NEAR_MISSES} more near misses")
        for note in record.notes:
            lines.append(f"  note: {note}")
    return lines
