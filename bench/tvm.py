"""TVM backend on all-MiniLM-L6-v2 (seq 128, batch 1, 2 threads): speed vs ONNX Runtime, exactness, compile times.

    python -m bench.tvm [--exporters dynamo,legacy] [--runs 30] [--cross] [--json out.json]

Rows, all timed interleaved in one run (rounds of 5 calls per runner, median over all calls):
- FP32: ORT FP32 (all graph optimizations) vs graphopt ``tvm-llvm`` (no tuning run) on the same
  model; max abs difference of the outputs.
- ivit: the integer-only model on ``tvm-llvm`` vs ORT FP32, ORT ``quantize_dynamic`` int8 and ORT
  running the same integer graph; bit-exactness of TVM vs that ORT run on 8 held-out sentences.
  On a host with VNNI, ``tvm-llvm`` takes the ``vpdpbusd`` int8 kernels; the row ``tvm-llvm-avx2``
  is the same model built for the host CPU with VNNI switched off in ``mattr`` (the AVX2 int8
  kernels, everything else unchanged), timed in the same interleaved rounds.
- compile time of MiniLM (FP32 and ivit) for ``tvm-llvm`` and, with ``--cross``, ``tvm-aarch64``
  and ``tvm-cuda`` (CUDA code is generated and compiled with nvcc; nothing runs on a GPU here).
Ratios above 1 mean faster than the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TVM_NUM_THREADS", "2")

import numpy as np  # noqa: E402
import onnx_ir as ir  # noqa: E402

import graphopt  # noqa: E402
from ._timing import interleaved_medians  # noqa: E402
from .ivit import CALIB_SENTENCES, _dynamic_int8  # noqa: E402
from graphopt.backends import ort as ort_backend  # noqa: E402
from graphopt.backends import tvm as tvm_backend  # noqa: E402
from graphopt.backends.tvm import targets as tvm_targets  # noqa: E402

THREADS = 2
EXACT_SENTENCES = 8


def _ort_runner(model, feeds, optimization="all"):
    if not isinstance(model, ir.Model):
        model = ir.serde.deserialize_model(model)
    session = ort_backend.make_session(model, optimization=optimization, threads=THREADS)
    return lambda: session.run(None, feeds), session


def _tvm_runner(artifact, feeds):
    arguments = artifact._arguments(feeds)
    main, device = artifact.vm["main"], artifact._device()

    def run():
        main(*arguments)
        device.sync()

    return run


def _compile_seconds(model: ir.Model, target: str, feeds) -> float:
    start = time.perf_counter()
    tvm_backend.compile(model, target=target, threads=THREADS, example_inputs=feeds)
    return time.perf_counter() - start


def _host_has_vnni() -> bool:
    from graphopt.backends.tvm.convert import vnni_isa  # noqa: PLC0415

    return vnni_isa(tvm_targets.resolve("tvm-llvm").tvm_target()) is not None


def _avx2_int8_target() -> str:
    """The host target with VNNI switched off: the int8 matmuls fall to the AVX2 kernels, nothing else changes."""
    config = tvm_targets.host_target_config()
    return json.dumps({**config, "mattr": [*config.get("mattr", []), "-avx512vnni", "-avxvnni"]})


def _mismatches(artifact, exact_session, feeds_list) -> int:
    """Sentences on which ``artifact`` differs from ORT running the same integer graph (unoptimized)."""
    mismatches = 0
    for f in feeds_list:
        expected, got = ort_backend.run(exact_session, f), artifact.run(f)
        mismatches += any(not np.array_equal(expected[k], got[k]) for k in expected)
    return mismatches


def minilm(exporter: str) -> list[dict]:
    from graphopt.models import minilm as minilm_model  # noqa: PLC0415

    proto = minilm_model.build(**({} if exporter == "dynamo" else {"exporter": "legacy", "opset": 17}))
    sentences = minilm_model.sentences()
    calib_batch = minilm_model.tokenize(sentences[:CALIB_SENTENCES], seq_len=128)
    calib = [{k: v[i:i + 1] for k, v in calib_batch.items()} for i in range(CALIB_SENTENCES)]
    held = minilm_model.tokenize(sentences[CALIB_SENTENCES:CALIB_SENTENCES + EXACT_SENTENCES], seq_len=128)
    feeds_list = [{k: v[i:i + 1] for k, v in held.items()} for i in range(EXACT_SENTENCES)]
    feeds = feeds_list[0]
    rows = []

    t = time.perf_counter()
    fp32 = graphopt.compile(proto, "cleanup", calib=[feeds], targets=["tvm-llvm"], validate=False)
    fp32_compile = time.perf_counter() - t
    fp32_tvm = fp32.artifacts["tvm-llvm"]
    ort_fp32, fp32_session = _ort_runner(proto, feeds)
    reference = [ort_backend.run(fp32_session, f) for f in feeds_list[:2]]
    max_abs = max(float(np.abs(fp32_tvm.run(f)[k] - r[k]).max()) for f, r in zip(feeds_list, reference) for k in r)

    t = time.perf_counter()
    ivit = graphopt.compile(proto, "ivit", calib=calib, targets=["tvm-llvm"], validate=False)
    ivit_seconds = time.perf_counter() - t
    ivit_tvm = ivit.artifacts["tvm-llvm"]
    ort_ivit, ivit_session = _ort_runner(ivit.model.clone(), feeds)
    exact_session = ort_backend.make_session(ivit.model.clone(), optimization="disable", threads=THREADS)
    mismatches = _mismatches(ivit_tvm, exact_session, feeds_list)
    ort_dynamic, _ = _ort_runner(_dynamic_int8(proto), feeds)
    runners = {"ort-fp32": ort_fp32, "tvm-fp32": _tvm_runner(fp32_tvm, feeds), "ort-dynamic-int8": ort_dynamic,
               "ort-ivit": ort_ivit, "tvm-ivit": _tvm_runner(ivit_tvm, feeds)}
    avx2_tvm = None
    if _host_has_vnni():
        avx2_tvm = tvm_backend.compile(ivit.model, target=_avx2_int8_target(), threads=THREADS, example_inputs=feeds)
        runners["tvm-ivit-avx2"] = _tvm_runner(avx2_tvm, feeds)

    medians = interleaved_medians(runners, ARGS.runs)
    base = medians["ort-fp32"]
    model = f"minilm-{exporter}"
    rows.append({"model": model, "variant": "fp32", "runtime": "ort", "ms": base, "vs_ort_fp32": 1.0})
    rows.append({"model": model, "variant": "fp32", "runtime": "tvm-llvm", "ms": medians["tvm-fp32"], "vs_ort_fp32": base / medians["tvm-fp32"],
                 "max_abs_vs_ort": max_abs, "compile_s": fp32_compile})
    rows.append({"model": model, "variant": "ort-dynamic-int8", "runtime": "ort", "ms": medians["ort-dynamic-int8"],
                 "vs_ort_fp32": base / medians["ort-dynamic-int8"]})
    rows.append({"model": model, "variant": "ivit", "runtime": "ort", "ms": medians["ort-ivit"], "vs_ort_fp32": base / medians["ort-ivit"]})
    rows.append({"model": model, "variant": "ivit", "runtime": "tvm-llvm", "ms": medians["tvm-ivit"], "vs_ort_fp32": base / medians["tvm-ivit"],
                 "vs_ort_dynamic": medians["ort-dynamic-int8"] / medians["tvm-ivit"],
                 "bit_exact_vs_ort": f"{EXACT_SENTENCES - mismatches}/{EXACT_SENTENCES} sentences",
                 "compile_s": ivit_tvm.details.get("import_seconds", 0) + ivit_tvm.details.get("build_seconds", 0),
                 "pipeline_and_compile_s": ivit_seconds})
    if avx2_tvm is not None:
        ms = medians["tvm-ivit-avx2"]
        rows.append({"model": model, "variant": "ivit", "runtime": "tvm-llvm-avx2", "ms": ms, "vs_ort_fp32": base / ms,
                     "vs_ort_dynamic": medians["ort-dynamic-int8"] / ms,
                     "bit_exact_vs_ort": f"{EXACT_SENTENCES - _mismatches(avx2_tvm, exact_session, feeds_list)}/{EXACT_SENTENCES} sentences"})
    if ARGS.cross:
        for target in ("tvm-aarch64", "tvm-cuda"):
            for variant, m in (("fp32", fp32.model), ("ivit", ivit.model)):
                rows.append({"model": model, "variant": variant, "runtime": target, "compile_s": _compile_seconds(m, target, feeds)})
    return rows


def main() -> None:
    global ARGS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exporters", default="dynamo,legacy")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--cross", action="store_true", help="also time compiling for tvm-aarch64 and tvm-cuda")
    parser.add_argument("--json", help="also write the rows here")
    ARGS = parser.parse_args()
    rows = [row for exporter in ARGS.exporters.split(",") for row in minilm(exporter)]
    print(f"{'model':<15} {'variant':<17} {'runtime':<12} {'ms':>8} {'vs ORT FP32':>12} {'compile s':>10}  notes")
    for r in rows:
        ms = f"{r['ms']:.2f}" if "ms" in r else "-"
        ratio = f"{r['vs_ort_fp32']:.2f}x" if "vs_ort_fp32" in r else "-"
        compile_s = f"{r['compile_s']:.1f}" if "compile_s" in r else "-"
        notes = "; ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()
                          if k in ("max_abs_vs_ort", "vs_ort_dynamic", "bit_exact_vs_ort"))
        print(f"{r['model']:<15} {r['variant']:<17} {r['runtime']:<12} {ms:>8} {ratio:>12} {compile_s:>10}  {notes}")
    if ARGS.json:
        Path(ARGS.json).write_text(json.dumps(rows, indent=2) + "\n")


ARGS = argparse.Namespace(runs=30, cross=False)

if __name__ == "__main__":
    main()
