"""Integer-only (``ivit``) accuracy and ONNX Runtime latency vs FP32 and ORT ``quantize_dynamic``.

    python -m bench.ivit [--models minilm-dynamo,minilm-legacy,digits-vit] [--runs 30] [--json out.json]

MiniLM (all-MiniLM-L6-v2, seq 128): calibration on ``sentences()[:CALIB]``, evaluation on the
other ``len(sentences()) - CALIB`` sentences (200): mean / min cosine of the mean-pooled sentence
embeddings vs FP32. Digits ViT: calibration on a slice of the training split, top-1 on the test
split. Each model's three variants are timed in the same run with ONNX Runtime (all graph
optimizations, 2 threads, batch 1, median of ``--runs``, the variants interleaved); ratios are
FP32 latency / variant latency (above 1: faster than FP32).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnx_ir as ir  # noqa: E402

import graphopt  # noqa: E402
from ._timing import interleaved_medians  # noqa: E402
from graphopt.backends import ort as ort_backend  # noqa: E402

CALIB_SENTENCES = 28
CALIB_IMAGES = 256
THREADS = 2


def _session(model: ir.Model | onnx.ModelProto, optimization: str = "all"):
    if isinstance(model, onnx.ModelProto):
        model = ir.serde.deserialize_model(model)
    return ort_backend.make_session(model, optimization=optimization, threads=THREADS)


def _dynamic_int8(proto: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX Runtime's own int8: ``quantize_dynamic`` with its defaults (QInt8 weights)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic  # noqa: PLC0415

    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(proto, source)
        quantize_dynamic(source, target, weight_type=QuantType.QInt8)
        return onnx.load(target)


def _latencies(variants: dict, feeds) -> dict[str, float]:
    """Median ms of each variant in ORT (all graph optimizations), timed interleaved."""
    sessions = {name: _session(model) for name, model in variants.items()}
    return interleaved_medians({name: functools.partial(session.run, None, dict(feeds)) for name, session in sessions.items()}, ARGS.runs)


def minilm_rows(exporter: str) -> list[dict]:
    from graphopt.models import minilm  # noqa: PLC0415

    proto = minilm.build(**({} if exporter == "dynamo" else {"exporter": "legacy", "opset": 17}))
    sentences = minilm.sentences()
    calib_batch = minilm.tokenize(sentences[:CALIB_SENTENCES], seq_len=128)
    calib = [{k: v[i:i + 1] for k, v in calib_batch.items()} for i in range(CALIB_SENTENCES)]
    held = minilm.tokenize(sentences[CALIB_SENTENCES:], seq_len=128)
    rows_of = [{k: v[i:i + 1] for k, v in held.items()} for i in range(len(held["input_ids"]))]

    def embed(model) -> np.ndarray:
        session = _session(model, optimization="disable")
        outs = [ort_backend.run(session, feeds) for feeds in rows_of]
        key = "last_hidden_state" if "last_hidden_state" in outs[0] else next(iter(outs[0]))
        return minilm.mean_pool(np.concatenate([o[key] for o in outs]), held["attention_mask"])

    result = graphopt.compile(proto, passes="ivit", calib=calib, validate=False, bench_runs=0)
    variants = {"fp32": proto, "ivit": result.model, "ort-dynamic-int8": _dynamic_int8(proto)}
    base = embed(variants["fp32"])
    latency = _latencies(variants, rows_of[0])
    fp32_ms = latency["fp32"]
    rows = []
    for name, model in variants.items():
        got = base if name == "fp32" else embed(model)
        cos = (got * base).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(base, axis=1)
        ms = latency[name]
        rows.append({"model": f"minilm-{exporter}", "variant": name, "sentences": len(cos), "mean_cosine": float(cos.mean()),
                     "min_cosine": float(cos.min()), "latency_ms": ms, "speedup_vs_fp32": fp32_ms / ms,
                     "pipeline_s": result.report.seconds.get("rewrite") if name == "ivit" else None})
    return rows


def digits_rows() -> list[dict]:
    from graphopt.models import digits_vit  # noqa: PLC0415

    proto = digits_vit.build()
    x_train, _, x_test, y_test = digits_vit.dataset()
    calib = [{"pixels": x_train[i:i + 32]} for i in range(0, CALIB_IMAGES, 32)]
    result = graphopt.compile(proto, passes="ivit", calib=calib, validate=False, bench_runs=0)
    variants = {"fp32": proto, "ivit": result.model, "ort-dynamic-int8": _dynamic_int8(proto)}
    latency = _latencies(variants, {"pixels": x_test[:1]})
    fp32_ms = latency["fp32"]
    rows = []
    for name, model in variants.items():
        session = _session(model, optimization="disable")
        logits = np.concatenate([ort_backend.run(session, {"pixels": x_test[i:i + 64]})["logits"] for i in range(0, len(x_test), 64)])
        ms = latency[name]
        rows.append({"model": "digits-vit", "variant": name, "images": len(y_test), "top1": float((logits.argmax(1) == y_test).mean()),
                     "latency_ms": ms, "speedup_vs_fp32": fp32_ms / ms})
    return rows


def main() -> None:
    global ARGS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="minilm-dynamo,minilm-legacy,digits-vit")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--json", help="also write the rows here")
    ARGS = parser.parse_args()
    rows = []
    for name in ARGS.models.split(","):
        rows += digits_rows() if name == "digits-vit" else minilm_rows(name.removeprefix("minilm-"))
    print(f"{'model':<14} {'variant':<17} {'accuracy':>22} {'ORT ms':>8} {'vs FP32':>8}")
    for r in rows:
        acc = f"top-1 {r['top1']:.4f}" if "top1" in r else f"cos {r['mean_cosine']:.4f} (min {r['min_cosine']:.3f})"
        print(f"{r['model']:<14} {r['variant']:<17} {acc:>22} {r['latency_ms']:>8.2f} {r['speedup_vs_fp32']:>7.2f}x")
    if ARGS.json:
        Path(ARGS.json).write_text(json.dumps(rows, indent=2) + "\n")


ARGS = argparse.Namespace(runs=30)

if __name__ == "__main__":
    main()
