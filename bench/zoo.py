"""The zoo matrix: every zoo model through ``canonicalize`` and (transformers) ``ivit``.

    python -m bench.zoo [--only NAME ...] [--no-ivit] [--tvm] [--json PATH]
    python -m bench.zoo --targets tvm-llvm [--only bert-base ...] [--no-ivit] [--runs 10]   # bench/zoo_tvm.py

One row per model: whether it builds (or which exporter limit stopped it), the outputs of the
``canonicalize`` result vs the original (cosine, max abs; ORT, optimizations off), the exporter
patterns it found (Softmax attention, Erf/Tanh GELU, Pow-based norms) and how many of each are
left unfused *without* a stated decline, whether ONNX Runtime loads and runs the result at every
optimization level, and for transformers whether ``ivit`` is integer-only (float ops left) and its
output cosine. ``tests/zoo`` asserts the same per model.
"""

from __future__ import annotations

import argparse
import collections
import json
import time

import numpy as np

from graphopt.metrics import Tolerances

CANONICALIZE_MIN_COSINE = {"fp16": 0.9999}  # per form; 0.99999 otherwise
LEVELS = ("disable", "basic", "extended", "all")
# exporter spelling -> (canonical op that replaces it, the pass that declines it)
CANDIDATES = {"Softmax": ("DotProductAttention", "attention"), "Erf": ("Gelu", "gelu"), "Pow": (None, "layer-norm")}


def samples(entry, count: int = 2) -> list[dict]:
    return [entry.example_inputs(seed) for seed in range(count)]


# tvm-llvm parity with ONNX Runtime on the same rewritten model. FP32: cosine and max abs relative to
# the output's largest magnitude (at least 1), looser for float16 models (11-bit mantissa). ivit: every
# output a DequantizeLinear makes (the integer region's result) bit for bit; outputs that pass float
# ops after it (a float tail, a KV cache rotated in float) within float rounding.
TVM_MIN_COSINE = 0.9999
TVM_ATOL = {"fp16": 1e-2}  # per form; 1e-3 otherwise
TVM_FLOAT_TAIL_ATOL = 1e-5


def tvm_row(entry, passes: str = "canonicalize") -> dict:
    """``passes`` then ``tvm-llvm``: the compiled code against ONNX Runtime running the same model."""
    import graphopt

    start = time.perf_counter()
    result = graphopt.compile(entry.build(), passes=passes, calib=samples(entry, 2), targets=["tvm-llvm"], mask=None,
                              tolerances=Tolerances(min_cosine=None))
    metrics = result.report.parity["tvm-llvm"]["vs_onnx"]
    scaled = {name: m["max_abs"] / max(1.0, m["ref_max_abs"] or 0.0) for name, m in metrics.items()}
    cosine = min((m["cosine"] for m in metrics.values() if m["cosine"] is not None), default=None)
    if passes == "ivit":
        exact = {v.name for v in result.model.graph.outputs if v.producer() is not None and v.producer().op_type == "DequantizeLinear"}
        ok = all(scaled[name] == 0 if name in exact else scaled[name] <= TVM_FLOAT_TAIL_ATOL for name in metrics)
    else:
        ok = cosine is not None and cosine >= TVM_MIN_COSINE and max(scaled.values()) <= TVM_ATOL.get(entry.form, 1e-3)
    return {"tvm_passes": passes, "tvm_ok": ok, "tvm_cosine": cosine, "tvm_scaled_max_abs": max(scaled.values()),
            "tvm_bit_exact": all(v == 0 for v in scaled.values()), "tvm_seconds": time.perf_counter() - start}


def _guarded(row_function, entry, *args) -> dict:
    """The row, or one that says why TVM could not compile the model (refused or crashed)."""
    try:
        return row_function(entry, *args)
    except Exception as e:  # noqa: BLE001 — the table records it; the other models still run
        return {"tvm_ok": False, "tvm_error": f"{type(e).__name__}: {str(e).strip()[:160]}", "tvm_cosine": None, "tvm_bit_exact": False}


def ort_levels(model, feeds) -> list[str]:
    """The ONNX Runtime optimization levels that load and run ``model`` (all four expected)."""
    from graphopt.backends import ort

    ok = []
    for level in LEVELS:
        try:
            ort.run(ort.make_session(model.clone(), optimization=level), feeds)
            ok.append(level)
        except Exception:  # noqa: BLE001 — the row records which level failed
            continue
    return ok


def unexplained(result) -> dict[str, int]:
    """Exporter spellings still in the result whose pass recorded no decline (should be empty)."""
    left = collections.Counter(n.op_type for n in result.model.graph if n.op_type in CANDIDATES)
    declined = {p.name for p in result.report.passes if p.declines}
    return {op: n for op, n in left.items() if CANDIDATES[op][1] not in declined}


def canonicalize_row(entry) -> dict:
    import graphopt

    row = {"name": entry.name, "family": entry.family, "exporter": entry.exporter, "opset": entry.opset, "form": entry.form}
    try:
        proto = entry.build()
    except Exception as e:  # noqa: BLE001 — ExportUnsupported and friends: recorded, not raised
        return {**row, "status": "not built", "why": str(e)[:160]}
    start = time.perf_counter()
    tolerances = Tolerances(min_cosine=CANONICALIZE_MIN_COSINE.get(entry.form, 0.99999))
    result = graphopt.compile(proto, passes="canonicalize", calib=samples(entry), tolerances=tolerances, mask=None)
    worst = min(result.report.accuracy.values(), key=lambda m: m["cosine"] if m["cosine"] is not None else -1)
    fused = collections.Counter(n.op_type for n in result.model.graph
                                if n.op_type in ("Gelu", "LayerNormalization", "RMSNormalization", "DotProductAttention"))
    return {**row, "status": "ok" if result.ok else "FAILED", "violations": result.report.violations,
            "cosine": worst["cosine"], "max_abs": worst["max_abs"], "fused": dict(fused), "unexplained": unexplained(result),
            "declined": {p.name: len(p.declines) for p in result.report.passes if p.declines},
            "ort_levels": ort_levels(result.model, samples(entry, 1)[0]), "seconds": time.perf_counter() - start}


def ivit_row(entry) -> dict:
    import graphopt

    start = time.perf_counter()
    result = graphopt.compile(entry.build(), passes="ivit", calib=samples(entry, 4), validate=True,
                              tolerances=Tolerances(min_cosine=None), mask=None)
    verdict = result.report.integer_only
    float_ops = collections.Counter(op["op_type"] for op in verdict.get("float_ops", []))
    cosines = [m["cosine"] for m in result.report.accuracy.values() if m["cosine"] is not None]
    return {"integer_only": bool(verdict.get("ok")), "float_ops": dict(float_ops), "ivit_cosine": min(cosines, default=None),
            "ivit_ort_levels": ort_levels(result.model, samples(entry, 1)[0]), "ivit_seconds": time.perf_counter() - start}


def main(argv=None) -> int:
    from graphopt.models import zoo

    parser = argparse.ArgumentParser(prog="python -m bench.zoo", description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="zoo entries (default: all)")
    parser.add_argument("--no-ivit", action="store_true")
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--tvm", action="store_true", help="add the tvm-llvm column: parity with ORT (FP32; ivit bit for bit)")
    parser.add_argument("--targets", help="tvm-llvm: the published-size benchmark set on TVM vs ONNX Runtime (bench/zoo_tvm.py)")
    parser.add_argument("--runs", type=int, default=10, help="timed runs per runtime with --targets (interleaved)")
    args = parser.parse_args(argv)
    if args.targets:
        return _targets(args)
    rows = []
    print(" ".join(f"{header:<{width}}" for header, width, _ in COLUMNS))
    for name, entry in zoo.entries().items():
        if args.only and name not in args.only:
            continue
        row = canonicalize_row(entry)
        if row["status"] != "not built" and entry.transformer and not args.no_ivit:
            row.update(ivit_row(entry))
        if row["status"] != "not built" and args.tvm:
            row.update(_guarded(tvm_row, entry))
            if entry.transformer and not args.no_ivit:
                row.update({f"ivit_{k}": v for k, v in _guarded(tvm_row, entry, "ivit").items()})
        rows.append(row)
        print(line(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1, default=str)
    built = [r for r in rows if r["status"] != "not built"]
    print(f"\n{len(built)} of {len(rows)} built; canonicalize ok on {sum(r['status'] == 'ok' for r in built)}; "
          f"ivit integer-only on {sum(r.get('integer_only', False) for r in built)} of {sum('integer_only' in r for r in built)}")
    return 0


def _targets(args) -> int:
    from . import zoo_tvm

    if args.targets != "tvm-llvm":
        raise SystemExit(f"--targets {args.targets}: only tvm-llvm is benchmarked on this machine")
    rows = zoo_tvm.run(args.only, ivit=not args.no_ivit, runs=args.runs)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1, default=str)
    return 0


def _fused(row: dict) -> str:
    return ", ".join(f"{k.replace('Normalization', 'Norm').replace('DotProductAttention', 'Attn')} {v}"
                     for k, v in row["fused"].items()) or "-"


def _ivit(row: dict) -> str:
    if "integer_only" not in row:
        return "-"
    return "integer-only" if row["integer_only"] else "float: " + ",".join(f"{k}{v}" for k, v in row["float_ops"].items())


def _levels(levels: list[str]) -> str:
    return "all 4" if len(levels) == len(LEVELS) else ",".join(levels) or "none"


# The table, one (header, width, cell) per column: another column (a TVM target, say) is one more entry
# here, its cell reading what its own *_row function added to the row.
COLUMNS = [
    ("model", 24, lambda r: r["name"]),
    ("exporter", 8, lambda r: r["exporter"]),
    ("opset", 5, lambda r: str(r["opset"])),
    ("form", 12, lambda r: r["form"]),
    ("canonicalize", 12, lambda r: r["status"]),
    ("cosine", 9, lambda r: f"{r['cosine']:.6f}"),
    ("max abs", 8, lambda r: f"{r['max_abs']:.1e}"),
    ("fused", 30, _fused),
    ("declined", 22, lambda r: ", ".join(f"{k} {v}" for k, v in r["declined"].items()) or "-"),
    ("unexplained", 11, lambda r: ", ".join(f"{k} {v}" for k, v in r["unexplained"].items()) or "-"),
    ("ORT levels", 10, lambda r: _levels(r["ort_levels"])),
    ("ivit", 24, _ivit),
    ("ivit cos", 8, lambda r: f"{r['ivit_cosine']:.5f}" if r.get("ivit_cosine") is not None else "-"),
    ("ivit ORT", 8, lambda r: _levels(r["ivit_ort_levels"]) if "ivit_ort_levels" in r else "-"),
    ("tvm-llvm vs ORT", 24, lambda r: _tvm(r)),
]


def _tvm(row: dict) -> str:
    if "tvm_ok" not in row:
        return "-"
    fp32 = "ok" if row["tvm_ok"] else row.get("tvm_error") or f"FAILED cos {row['tvm_cosine']}"
    if "ivit_tvm_ok" not in row:
        return fp32
    ivit = "bit-exact" if row["ivit_tvm_bit_exact"] else "exact where integer" if row["ivit_tvm_ok"] else row.get("ivit_tvm_error") or "FAILED"
    return f"{fp32}; ivit {ivit}"


def line(row: dict) -> str:
    if row["status"] == "not built":
        head = " ".join(f"{cell(row):<{width}}" for _, width, cell in COLUMNS[:4])
        return f"{head} not built: {row['why'][:90]}"
    return " ".join(f"{cell(row):<{width}}" for _, width, cell in COLUMNS)


if __name__ == "__main__":
    raise SystemExit(main())
