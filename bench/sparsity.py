"""Activation thresholding on the trained decoder: per method and target, the sparsity achieved on
held-out text and the held-out perplexity, side by side with the dense model.

    python -m bench.sparsity [--methods cats teal ...] [--targets 0.3 0.5 0.7] [--windows 64] [--calib 16] [--json PATH]
    python -m bench.sparsity --decode [--methods cats teal] [--runs 20] [--tokens 64] [--rounds 5]   # tokens/s, tvm-llvm

The model is ``stdlib-llama`` (graphopt.models.stdlib_llama: a 1.7 M-parameter byte-level LLaMA
trained on the Python standard library; held-out = files it never saw). Each method runs as
``canonicalize,<method>(sparsity=s)``, calibrated on ``--calib`` windows of 64 training tokens.
Perplexity per byte over ``--windows`` held-out windows of 256 tokens (ONNX Runtime, graph
optimizations off); sparsity from ``graphopt.sparsity.measure_sparsity`` on 8 held-out windows:
the parameter-weighted model-wide figure and the per-threshold range. Post-training: no fine-tuning.
``--decode`` measures decode speed on tvm-llvm (2 threads), where the TVM preparation puts the sparse
kernels in (``sparse-linear``), each method at 50% against the dense build: (1) one decode step
(batch 1, a 128-position KV cache), ``--runs`` calls per round; (2) a greedy KV-cache decode loop of
``--tokens`` tokens, each step's ``present_*`` fed back as the next ``past_*``. TVM builds static
shapes, so the loop keeps the cache at 128 positions by dropping the oldest one each step (a sliding
window; the rotary position stays at 128): every step costs what a step at position 128 costs, which is
the point of a timing loop, not of a text generator. Both are timed in ``--rounds`` rounds that
alternate the builds; the loop includes the host-side work of a real decode loop (argmax, feeding the
cache back through numpy). The tokens each sparse build generates are compared with the dense
build's (the fraction equal, a quality hint). One LLaMA-7B-shaped MLP: ``bench.sparsity_kernel``.
"""

from __future__ import annotations

import argparse
import json
import os
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


def _decode_loop(artifact, feeds: dict[str, np.ndarray], tokens: int) -> tuple[float, list[int]]:
    """Seconds for ``tokens`` greedy decode steps (cache fed back, oldest position dropped) and the tokens."""
    state, generated = dict(feeds), []
    start = time.perf_counter()
    for _ in range(tokens):
        out = artifact.run(state)
        token = out["logits"][:, -1].argmax(-1)
        generated.append(int(token[0]))
        state = {"input_ids": token[:, None].astype(np.int64),
                 **{"past_" + name[len("present_"):]: value[:, :, 1:] for name, value in out.items() if name.startswith("present_")}}
    return time.perf_counter() - start, generated


def decode_speed(methods: list[str], runs: int, tokens: int = 64, rounds: int = 5) -> list[dict]:
    """Decode speed on tvm-llvm: dense and each method at 50%, one step and a loop of ``tokens`` tokens,
    timed in alternating rounds."""
    import graphopt  # noqa: PLC0415
    from graphopt.models import stdlib_llama  # noqa: PLC0415

    proto = stdlib_llama.build(graph="decode")
    calib = [stdlib_llama.example_inputs(seed=s, graph="decode", batch=1, seq_len=128) for s in range(8)]
    feeds = stdlib_llama.example_inputs(seed=100, graph="decode", batch=1, seq_len=128)
    pipelines = {"dense": "canonicalize", **{m: f"canonicalize,{m}" + ("" if m in UNTARGETED else "(sparsity=0.5)") for m in methods}}
    artifacts, sparse_ops = {}, {}
    for name, pipeline in pipelines.items():
        artifacts[name] = graphopt.compile(proto, pipeline, calib=calib, targets=["tvm-llvm"], threads=2,
                                           validate=False).artifacts["tvm-llvm"]
        sparse_ops[name] = [p["rewrites"] for p in artifacts[name].details["prepare"] if p["pass"] == "sparse-linear"]
        print(f"compiled {name} ({pipeline}): sparse-linear {sparse_ops[name]}", flush=True)
    step_ms: dict[str, list[float]] = {name: [] for name in artifacts}
    loop_s: dict[str, list[float]] = {name: [] for name in artifacts}
    generated: dict[str, list[int]] = {}
    for _ in range(rounds):
        for name, artifact in artifacts.items():
            step_ms[name].append(artifact.time(feeds, runs=runs).median_ms)
            seconds, generated[name] = _decode_loop(artifact, feeds, tokens)
            loop_s[name].append(seconds)
    dense_step, dense_loop = statistics.median(step_ms["dense"]), statistics.median(loop_s["dense"])
    rows = []
    for name in artifacts:
        step, loop = statistics.median(step_ms[name]), statistics.median(loop_s[name])
        same = float(np.mean(np.asarray(generated[name]) == np.asarray(generated["dense"])))
        rows.append({"method": name, "pipeline": pipelines[name], "sparse_linear": sparse_ops[name], "step_ms": round(step, 4),
                     "step_speedup": round(dense_step / step, 3), "tokens": tokens, "loop_tokens_per_s": round(tokens / loop, 1),
                     "loop_speedup": round(dense_loop / loop, 3), "tokens_equal_to_dense": round(same, 3)})
    return rows


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
    parser.add_argument("--tokens", type=int, default=64, help="tokens of the decode loop per round with --decode (default 64)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds with --decode (default 5)")
    args = parser.parse_args(argv)
    if args.decode:
        print(f"stdlib-llama decode on tvm-llvm, 2 threads, 128-position cache; load average {os.getloadavg()[0]:.1f}", flush=True)
        rows = decode_speed(args.methods, args.runs, args.tokens, args.rounds)
        for r in rows:
            print(f"{r['method']:<8} step {r['step_ms']:.3f} ms ({r['step_speedup']:.2f}x dense); loop of {r['tokens']} tokens: "
                  f"{r['loop_tokens_per_s']:.0f} tokens/s ({r['loop_speedup']:.2f}x dense), "
                  f"{100 * r['tokens_equal_to_dense']:.0f}% of the tokens equal to dense's", flush=True)
        print(f"load average {os.getloadavg()[0]:.1f}")
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
