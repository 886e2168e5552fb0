"""Activation thresholding on the trained decoder: per method and target, the sparsity achieved on
held-out text and the held-out perplexity, side by side with the dense model.

    python -m bench.sparsity [--methods cats teal ...] [--targets 0.3 0.5 0.7] [--windows 64] [--calib 16] [--json PATH]
    python -m bench.sparsity --decode [--methods cats teal] [--runs 20]   # decode tokens/s on tvm-llvm, 50% vs dense

The model is ``stdlib-llama`` (graphopt.models.stdlib_llama: a 1.7 M-parameter byte-level LLaMA
trained on the Python standard library; held-out = files it never saw). Each method runs as
``canonicalize,<method>(sparsity=s)``, calibrated on ``--calib`` windows of 64 training tokens.
Perplexity per byte over ``--windows`` held-out windows of 256 tokens (ONNX Runtime, graph
optimizations off); sparsity from ``graphopt.sparsity.measure_sparsity`` on 8 held-out windows:
the parameter-weighted model-wide figure and the per-threshold range. Post-training: no fine-tuning.
``--decode`` times one decode step (batch 1, a 128-position KV cache) of the same model on
tvm-llvm, where the TVM preparation puts the sparse kernels in (``sparse-linear``), each method at
50% against the dense build, interleaved (5 rounds). One LLaMA-7B-shaped MLP: ``bench.sparsity_kernel``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

METHODS = ("cats", "teal")
TARGETS = (0.3, 0.5, 0.7)
UNTARGETED = ("relufy",)  # methods whose sparsity follows from the activation, not from an option
HELD_OUT_SPARSITY_WINDOWS = 8


def _perplexity(model, windows: int) -> float:
    from graphopt.backends import ort  # noqa: PLC0415
    from graphopt.models import stdlib_llama  # noqa: PLC0415

    return stdlib_llama.perplexity(ort.make_session(model, optimization="disable", threads=2), count=windows)


def _held_out_feeds() -> list[dict[str, np.ndarray]]:
    from graphopt.models import stdlib_llama  # noqa: PLC0415

    tokens = stdlib_llama.windows("held-out", HELD_OUT_SPARSITY_WINDOWS, 256)
    return [{"input_ids": row[None]} for row in tokens]


def row(proto, method: str | None, target: float | None, calib: list, windows: int) -> dict:
    import graphopt  # noqa: PLC0415
    from graphopt.sparsity import measure_sparsity  # noqa: PLC0415

    start = time.perf_counter()
    step = method if target is None else f"{method}(sparsity={target})"  # relufy has no target: ReLU makes its zeros
    pipeline = "canonicalize" if method is None else f"canonicalize,{step}"
    result = graphopt.compile(proto, pipeline, calib=calib, validate=False)
    out = {"method": method or "dense", "target": target, "pipeline": pipeline, "perplexity": _perplexity(result.model, windows)}
    if method is not None:
        measured = measure_sparsity(result.model, _held_out_feeds())
        achieved = [t.achieved for t in measured.tensors if t.achieved is not None]
        out.update(achieved=measured.model_wide, thresholds=len(measured.tensors), per_tensor_min=min(achieved, default=None),
                   per_tensor_max=max(achieved, default=None))
    out["seconds"] = round(time.perf_counter() - start, 1)
    return out


def decode_speed(methods: list[str], runs: int) -> list[dict]:
    """Tokens/s of one decode step on tvm-llvm: dense and each method at 50%, timed in alternating rounds."""
    import graphopt  # noqa: PLC0415
    from graphopt.models import stdlib_llama  # noqa: PLC0415

    proto = stdlib_llama.build(graph="decode")
    calib = [stdlib_llama.example_inputs(seed=s, graph="decode", batch=1, seq_len=128) for s in range(8)]
    feeds = stdlib_llama.example_inputs(seed=100, graph="decode", batch=1, seq_len=128)
    pipelines = {"dense": "canonicalize", **{m: f"canonicalize,{m}" + ("" if m in UNTARGETED else "(sparsity=0.5)") for m in methods}}
    artifacts = {name: graphopt.compile(proto, pipeline, calib=calib, targets=["tvm-llvm"], validate=False).artifacts["tvm-llvm"]
                 for name, pipeline in pipelines.items()}
    medians: dict[str, list[float]] = {name: [] for name in artifacts}
    for _ in range(5):
        for name, artifact in artifacts.items():
            medians[name].append(artifact.time(feeds, runs=runs).median_ms)
    dense = statistics.median(medians["dense"])
    return [{"method": name, "pipeline": pipelines[name], "step_ms": statistics.median(m), "tokens_per_s": 1000 / statistics.median(m),
             "speedup": dense / statistics.median(m)} for name, m in medians.items()]


def line(r: dict, dense: float) -> str:
    def pct(x):
        return "-" if x is None else f"{100 * x:.1f}%"

    spread = "-" if r.get("per_tensor_min") is None else f"{pct(r['per_tensor_min'])}–{pct(r['per_tensor_max'])}"
    return (f"{r['method']:<8} {pct(r['target']):>7} {pct(r.get('achieved')):>9} {spread:>14} {r.get('thresholds', 0):>4} "
            f"{r['perplexity']:>8.3f} {r['perplexity'] / dense:>7.3f}x {r['seconds']:>7}")


def main(argv=None) -> int:
    from graphopt import registry  # noqa: PLC0415
    from graphopt.models import stdlib_llama  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="python -m bench.sparsity", description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="*", default=[m for m in ("cats", "teal", "chess", "rsparse", "relufy") if m in {p.name for p in registry.list_passes()}])
    parser.add_argument("--targets", nargs="*", type=float, default=list(TARGETS))
    parser.add_argument("--windows", type=int, default=64, help="held-out windows of 256 tokens for perplexity (default 64)")
    parser.add_argument("--calib", type=int, default=16, help="calibration windows of 64 training tokens (default 16)")
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--decode", action="store_true", help="decode tokens/s on tvm-llvm at 50%% vs dense instead")
    parser.add_argument("--runs", type=int, default=20, help="timed decode steps per round with --decode (default 20)")
    args = parser.parse_args(argv)
    if args.decode:
        rows = decode_speed(args.methods, args.runs)
        for r in rows:
            print(f"{r['method']:<8} {r['step_ms']:.3f} ms/step {r['tokens_per_s']:.0f} tokens/s {r['speedup']:.2f}x dense", flush=True)
        return _write(rows, args.json)
    proto, calib = stdlib_llama.build(), stdlib_llama.calibration_samples(args.calib)
    print(f"stdlib-llama held-out perplexity per byte ({args.windows} windows of 256), {args.calib} calibration windows")
    print(f"{'method':<8} {'target':>7} {'achieved':>9} {'per tensor':>14} {'#':>4} {'ppl':>8} {'vs dense':>8} {'seconds':>7}")
    rows = [row(proto, None, None, calib, args.windows)]
    print(line(rows[0], rows[0]["perplexity"]), flush=True)
    for method in args.methods:
        for target in (args.targets if method not in UNTARGETED else [None]):
            rows.append(row(proto, method, target, calib, args.windows))
            print(line(rows[-1], rows[0]["perplexity"]), flush=True)
    return _write(rows, args.json)


def _write(rows: list[dict], path: str | None) -> int:
    if path:
        with open(path, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
