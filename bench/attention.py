"""One attention layer vs sequence length: softmax vs linear attention, latency, peak memory, decode step.

    python -m bench.attention [--lengths 512,1024,2048,4096,8192,16384] [--softmax-max 8192] [--runs 5]
                              [--threads 2] [--plot out/bench/attention.png] [--json out.json] [--no-memory] [--quick]
                              [--memory-lengths 1024,4096,16384]

One layer, batch 1, 12 heads x 64, float32, on this host's CPU with ``--threads`` threads:

- ``softmax tvm`` / ``softmax causal tvm``: graphopt's ``DotProductAttention`` kernel, a one-node model
  compiled by graphopt's tvm-llvm backend (``graphopt.backends.tvm.compile``);
- ``softmax ort``: ONNX Runtime (all graph optimizations) on MatMul(Q, Kᵀ)·scale -> Softmax -> MatMul(V);
- ``linear tvm`` / ``linear causal tvm``: ``LinearizedAttention``'s CPU kernels
  (``backends/tvm/kernels/linear_attention_fast.py``; causal chunked by 64, decay 1), through the
  backend when its converter emits them, else through the same Relax emission (``emit``) built with
  ``tvm.compile`` (the output says which). Qf, Kf are elu+1 maps of random Q, K (F = 64);
- ``hybrid w64 tvm`` / ``hybrid w64 causal tvm``: ``WindowedLinearAttention`` (LoLCATs' hybrid, window
  64, γ 0.5) through the backend, whose converter takes ``kernels/hybrid_attention_fast.py`` (the
  window as a band, the linear part chunked; linear in N); same Q, K, Qf, Kf, V. No decode case: the
  hybrid's decode (a window of cached keys plus the state) is not written.

Every runner at one length is timed interleaved (one warm-up call, then rounds in turn; at least 2
rounds, more while a round takes under ~2 s, at most ``--runs``). The numbers printed, fitted and
plotted are each runner's **fastest** round (the least disturbed on a shared host: under load a
2-thread parallel region waits for its descheduled worker); the JSON also has the medians. The log-log slope of time vs N is
a least-squares fit over the lengths from 1K up; the ratio at 8K is softmax / linear in the same
backend (tvm-llvm). Peak memory is the **resident-set growth of the first call** after compiling,
measured in a fresh process per case and length: the peak (``VmHWM``) is reset through
``/proc/self/clear_refs`` once the model is compiled and the inputs exist, and the growth is
``VmHWM - VmRSS`` around one call (native allocations included, which tracemalloc would miss).
Decode: one new token against a context of N: softmax reads the N cached keys and values
(``DotProductAttention`` with Sq = 1, both backends); linear attention updates its [F, Dv] state
(``recurrent_step_func``: cost independent of N).

Softmax beyond ``--softmax-max`` (default 8K) is not run: at 16K one float32 score matrix of 12
heads is 12.9 GB, beyond this 23 GB host once a second intermediate exists.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

import numpy as np

HEADS, DIM = 12, 64
SEED = 20250621
LENGTHS = (512, 1024, 2048, 4096, 8192, 16384)
QUICK_LENGTHS = (256, 512, 1024)
SOFTMAX_MAX = 8192
EPS = 1e-6
PREFILL = ("softmax tvm", "softmax causal tvm", "softmax ort", "linear tvm", "linear causal tvm", "hybrid w64 tvm",
           "hybrid w64 causal tvm")
WINDOW, GAMMA = 64, 0.5  # the hybrid cases' window and mixing factor
DECODE = ("softmax tvm", "softmax ort", "linear tvm")
ROUND_S = 2.0  # keep adding rounds while one round of every runner takes less than this


# --- inputs and models ---------------------------------------------------------------------------------


def _inputs(n_q: int, n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(SEED)
    q = rng.standard_normal((1, HEADS, n_q, DIM), dtype=np.float32)
    k = rng.standard_normal((1, HEADS, n, DIM), dtype=np.float32)
    v = rng.standard_normal((1, HEADS, n, DIM), dtype=np.float32)
    return {"q": q, "k": k, "v": v}


def _elu1(x: np.ndarray) -> np.ndarray:
    return np.where(x > 0, x + 1, np.exp(np.minimum(x, 0))).astype(np.float32)


def _onnx_model(nodes, n_q: int, n: int, initializers=()):
    import onnx  # noqa: PLC0415
    import onnx.helper as oh  # noqa: PLC0415
    import onnx_ir as ir  # noqa: PLC0415

    from graphopt import ops  # noqa: PLC0415

    f = onnx.TensorProto.FLOAT
    inputs = [oh.make_tensor_value_info(x, f, [1, HEADS, n_q if x == "q" else n, DIM]) for x in "qkv"]
    graph = oh.make_graph(nodes, "attention", inputs, [oh.make_tensor_value_info("y", f, [1, HEADS, n_q, DIM])],
                          list(initializers))
    model = ir.serde.deserialize_model(
        oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18), oh.make_opsetid(ops.DOMAIN, 1)]))
    ops.attach_functions(model)
    return model


def softmax_model(n_q: int, n: int, causal: int = 0):
    """One ``DotProductAttention`` node (scale 1/8, mask 0)."""
    import onnx.helper as oh  # noqa: PLC0415

    node = oh.make_node("DotProductAttention", ["q", "k", "v", "mask"], ["y"], domain="pkg.graphopt",
                        scale=DIM ** -0.5, causal=causal)
    return _onnx_model([node], n_q, n, [oh.make_tensor("mask", 1, [], [0.0])])


def ort_softmax_proto(n_q: int, n: int):
    """MatMul(Q, Kᵀ)·scale -> Softmax -> MatMul(V) as plain ONNX (what ONNX Runtime fuses on its own)."""
    import onnx  # noqa: PLC0415
    import onnx.helper as oh  # noqa: PLC0415

    f = onnx.TensorProto.FLOAT
    nodes = [oh.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]), oh.make_node("MatMul", ["q", "kt"], ["s"]),
             oh.make_node("Mul", ["s", "scale"], ["ss"]), oh.make_node("Softmax", ["ss"], ["p"], axis=-1),
             oh.make_node("MatMul", ["p", "v"], ["y"])]
    inputs = [oh.make_tensor_value_info(x, f, [1, HEADS, n_q if x == "q" else n, DIM]) for x in "qkv"]
    graph = oh.make_graph(nodes, "softmax", inputs, [oh.make_tensor_value_info("y", f, [1, HEADS, n_q, DIM])],
                          [oh.make_tensor("scale", f, [], [DIM ** -0.5])])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)])


def linear_model(n: int, causal: int):
    """One ``LinearizedAttention`` node on q, k, v read as Qf, Kf, V (decay 1)."""
    import onnx.helper as oh  # noqa: PLC0415

    node = oh.make_node("LinearizedAttention", ["q", "k", "v", "decay"], ["y"], domain="pkg.graphopt", causal=causal)
    return _onnx_model([node], n, n, [oh.make_tensor("decay", 1, [], [1.0])])


# --- runners: each a zero-argument call, built with its arguments prepared ------------------------------


def _tvm_backend_runner(model, feeds, threads):
    from graphopt.backends import tvm as tvm_backend  # noqa: PLC0415

    artifact = tvm_backend.compile(model, target="tvm-llvm", threads=threads, example_inputs=feeds)
    main, arguments = artifact.vm["main"], artifact._arguments(feeds)
    return lambda: main(*arguments)


def _fast_kernel_in_backend(model, feeds) -> bool:
    """Whether graphopt's importer puts the fast kernel in (the LinearizedAttention converter calls ``emit``)."""
    from graphopt.backends.tvm import importer, targets  # noqa: PLC0415

    shapes = importer.static_shapes(model, feeds)
    prepared, _ = importer.prepare(model, shapes)
    mod = importer.to_relax(prepared, shapes, targets.resolve("tvm-llvm").tvm_target())
    return any(gv.name_hint.startswith("graphopt_linear_attention") and "weights" not in gv.name_hint
               and gv.name_hint not in ("graphopt_linear_attention_kv", "graphopt_linear_attention_ksum",
                                        "graphopt_linear_attention_output", "graphopt_linear_attention_causal_output")
               for gv in mod.functions)


def _emit_runner(n: int, causal: int, feeds, threads):
    """The fast kernel through ``linear_attention_fast.emit`` in a Relax function, built by tvm.compile."""
    import tvm  # noqa: PLC0415
    from tvm import relax  # noqa: PLC0415

    from graphopt.backends.tvm import targets  # noqa: PLC0415
    from graphopt.backends.tvm.artifact import _set_threads  # noqa: PLC0415
    from graphopt.backends.tvm.kernels import linear_attention_fast as fast  # noqa: PLC0415

    target = targets.resolve("tvm-llvm").tvm_target()
    bb = relax.BlockBuilder()
    params = [relax.Var(x, relax.TensorType(feeds[x].shape, "float32")) for x in "qkv"]
    with bb.function("main", params):
        with bb.dataflow():
            with target:
                y = fast.emit(bb, *params, relax.const(np.float32(1)), causal=causal, eps=EPS)
            y = bb.emit_output(y)
        bb.emit_func_output(y)
    _set_threads(threads)
    vm = relax.VirtualMachine(tvm.compile(bb.get(), target=target), tvm.cpu())
    main, arguments = vm["main"], [tvm.runtime.tensor(feeds[x]) for x in "qkv"]
    return lambda: main(*arguments)


def hybrid_model(n: int, causal: int):
    """One ``WindowedLinearAttention`` node (window 64, scale 1/8, γ 0.5) on q, k, qf, kf, v."""
    import onnx  # noqa: PLC0415
    import onnx.helper as oh  # noqa: PLC0415
    import onnx_ir as ir  # noqa: PLC0415

    from graphopt import ops  # noqa: PLC0415

    f = onnx.TensorProto.FLOAT
    node = oh.make_node("WindowedLinearAttention", ["q", "k", "qf", "kf", "v", "gamma"], ["y"], domain="pkg.graphopt",
                        window=WINDOW, scale=DIM ** -0.5, causal=causal)
    inputs = [oh.make_tensor_value_info(x, f, [1, HEADS, n, DIM]) for x in ("q", "k", "qf", "kf", "v")]
    graph = oh.make_graph([node], "hybrid", inputs, [oh.make_tensor_value_info("y", f, [1, HEADS, n, DIM])],
                          [oh.make_tensor("gamma", f, [], [GAMMA])])
    model = ir.serde.deserialize_model(
        oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18), oh.make_opsetid(ops.DOMAIN, 1)]))
    ops.attach_functions(model)
    return model


def _hybrid_feeds(n: int) -> dict[str, np.ndarray]:
    feeds = _inputs(n, n)
    return {**feeds, "qf": _elu1(feeds["q"]), "kf": _elu1(feeds["k"])}


def _linear_feeds(n: int) -> dict[str, np.ndarray]:
    feeds = _inputs(n, n)
    return {"q": _elu1(feeds["q"]), "k": _elu1(feeds["k"]), "v": feeds["v"]}


def prefill_runner(case: str, n: int, threads: int, path: list | None = None):
    """(run, feeds) of one prefill case at length n."""
    if case.startswith("hybrid"):
        feeds = _hybrid_feeds(n)
        return _tvm_backend_runner(hybrid_model(n, int("causal" in case)), feeds, threads), feeds
    if case.startswith("linear"):
        causal = int("causal" in case)
        feeds = _linear_feeds(n)
        model = linear_model(n, causal)
        if _fast_kernel_in_backend(model, feeds):
            if path is not None:
                path.append("backend")
            return _tvm_backend_runner(model, feeds, threads), feeds
        if path is not None:
            path.append("emit")
        return _emit_runner(n, causal, feeds, threads), feeds
    feeds = _inputs(n, n)
    if case == "softmax ort":
        return _ort_runner(ort_softmax_proto(n, n), feeds, threads), feeds
    return _tvm_backend_runner(softmax_model(n, n, int("causal" in case)), feeds, threads), feeds


def _ort_runner(proto, feeds, threads):
    import onnxruntime as ort  # noqa: PLC0415

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return lambda: session.run(None, feeds)


def decode_runner(case: str, n: int, threads: int):
    """One new token against a context of n (softmax: the cached K, V; linear: a state of any history)."""
    feeds = _inputs(1, n)
    if case == "softmax ort":
        return _ort_runner(ort_softmax_proto(1, n), feeds, threads)
    if case == "softmax tvm":
        return _tvm_backend_runner(softmax_model(1, n), feeds, threads)
    import tvm  # noqa: PLC0415

    from graphopt.backends.tvm import targets  # noqa: PLC0415
    from graphopt.backends.tvm.artifact import _set_threads  # noqa: PLC0415
    from graphopt.backends.tvm.cpu.common import vector_lanes  # noqa: PLC0415
    from graphopt.backends.tvm.kernels import linear_attention_fast as fast  # noqa: PLC0415

    target = targets.resolve("tvm-llvm").tvm_target()
    step = fast.compile_kernel(fast.recurrent_step_func(HEADS, DIM, DIM, vector_lanes(target, "float32"), EPS), target)
    _set_threads(threads)
    rng = np.random.default_rng(SEED)
    arrays = [_elu1(feeds["q"][0]), _elu1(feeds["k"][0, :, :1]), feeds["v"][0, :, :1], np.ones(HEADS, np.float32),
              np.abs(rng.standard_normal((HEADS, DIM, DIM), dtype=np.float32)), np.abs(rng.standard_normal((HEADS, DIM), dtype=np.float32)),
              np.zeros((HEADS, 1, DIM), np.float32), np.zeros((HEADS, DIM, DIM), np.float32), np.zeros((HEADS, DIM), np.float32)]
    arguments = [tvm.runtime.tensor(np.ascontiguousarray(a)) for a in arrays]
    return lambda: step(*arguments)


# --- timing, memory, fits ---------------------------------------------------------------------------------


def interleaved(runners: dict, runs: int, calls: int = 1) -> dict[str, tuple[float, float]]:
    """(fastest, median) ms per call of each runner: one warm-up each, then rounds in turn (2 .. runs, while a
    round is short); a sample is ``calls`` calls in a row (decode steps are too short to time alone)."""
    for run in runners.values():
        run()
    samples = {name: [] for name in runners}
    rounds = 0
    while rounds < 2 or (rounds < runs and sum(s[-1] for s in samples.values()) * calls / 1e3 < ROUND_S):
        for name, run in runners.items():
            time.sleep(0.05)  # thread pools spin after a call
            start = time.perf_counter()
            for _ in range(calls):
                run()
            samples[name].append((time.perf_counter() - start) * 1e3 / calls)
        rounds += 1
    return {name: (float(np.min(values)), float(np.median(values))) for name, values in samples.items()}


def _status_kb(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def measure_memory(kind: str, case: str, n: int, threads: int) -> dict:
    """In this (fresh) process: build the case, then the resident-set growth of its first call (MB)."""
    run = prefill_runner(case, n, threads)[0] if kind == "prefill" else decode_runner(case, n, threads)
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")  # reset VmHWM to the current RSS
    before = _status_kb("VmRSS")
    run()
    return {"rss_growth_mb": round((_status_kb("VmHWM") - before) / 1024, 1)}


def memory_in_subprocess(kind: str, case: str, n: int, threads: int) -> float | None:
    command = [sys.executable, "-m", __spec__.name if __spec__ else "bench.attention", "--memory-case",
               json.dumps([kind, case, n]), "--threads", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        print(f"  memory {kind} {case} N={n}: failed ({done.returncode}): {done.stderr.strip()[-300:]}", flush=True)
        return None
    return json.loads(lines[-1])["rss_growth_mb"]


def loglog_slope(lengths, ms, low: int = 1024) -> float | None:
    points = [(math.log(n), math.log(t)) for n, t in zip(lengths, ms) if n >= low and t is not None]
    if len(points) < 2:
        return None
    x, y = np.array(points).T
    return round(float(np.polyfit(x, y, 1)[0]), 3)


def check_outputs(threads: int, n: int = 128, hybrid: bool = True) -> None:
    """The runners compute attention: linear (and the hybrid) vs the op's reference, softmax tvm vs ort vs numpy."""
    from graphopt.ops.linear_attention import linear_attention_reference  # noqa: PLC0415

    for causal in (0, 1):
        run, feeds = prefill_runner("linear causal tvm" if causal else "linear tvm", n, threads)
        got = run()
        got = got.numpy() if hasattr(got, "numpy") else np.asarray(got[0].numpy())
        expected = linear_attention_reference(feeds["q"], feeds["k"], feeds["v"], np.float32(1), causal=causal, eps=EPS)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    from graphopt.ops.hybrid_attention import hybrid_attention_reference  # noqa: PLC0415

    for causal in (0, 1) if hybrid else ():
        run, feeds = prefill_runner("hybrid w64 causal tvm" if causal else "hybrid w64 tvm", n, threads)
        got = run().numpy()
        expected = hybrid_attention_reference(feeds["q"], feeds["k"], feeds["qf"], feeds["kf"], feeds["v"], GAMMA,
                                              window=WINDOW, scale=DIM ** -0.5, causal=causal)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    feeds = _inputs(n, n)
    s = np.einsum("bhqd,bhkd->bhqk", feeds["q"], feeds["k"]) * DIM ** -0.5
    p = np.exp(s - s.max(-1, keepdims=True))
    expected = (p / p.sum(-1, keepdims=True)) @ feeds["v"]
    for case in ("softmax tvm", "softmax ort"):
        got = prefill_runner(case, n, threads)[0]()
        got = got[0] if isinstance(got, list) else got.numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def plot(result: dict, path: str) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(1, 3, figsize=(16, 5))
    for ax, key, title, unit in ((axes[0], "prefill_ms", "one layer, prefill", "ms"),
                                 (axes[2], "decode_ms", "decode step vs context", "ms")):
        for case, values in result[key].items():
            points = [(n, t) for n, t in zip(result["lengths"], values) if t is not None]
            if points:
                ax.plot(*zip(*points), marker="o", label=case)
        ax.set(xscale="log", yscale="log", xlabel="sequence length N", ylabel=unit, title=title)
        ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
    ax = axes[1]
    for case, values in result.get("memory_mb", {}).items():
        points = [(n, max(m, 0.1)) for n, m in zip(result["lengths"], values) if m is not None]
        if points:
            ax.plot(*zip(*points), marker="o", label=case)
    ax.set(xscale="log", yscale="log", xlabel="sequence length N", ylabel="MB", title="peak RSS growth of one prefill call")
    if result.get("memory_mb"):
        ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"attention, {HEADS} heads x {DIM}, batch 1, fp32, {result['threads']} threads (load {result['load_average']})")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)


def _fmt(value, digits=2):
    return "-" if value is None else f"{value:.{digits}f}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default=None, help=f"comma-separated (default {','.join(map(str, LENGTHS))})")
    parser.add_argument("--softmax-max", type=int, default=SOFTMAX_MAX, help="longest N softmax attention runs at")
    parser.add_argument("--runs", type=int, default=5, help="at most this many timed rounds per length")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--plot", default="out/bench/attention.png")
    parser.add_argument("--json", default=None, help="write the measurements here")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-case memory subprocesses")
    parser.add_argument("--memory-lengths", default=None, help="measure memory at these lengths only (default: all)")
    parser.add_argument("--quick", action="store_true", help="smoke test: N 256..1K (unless --lengths), 2 rounds, no memory, "
                        "no hybrid cases unless --cases names them")
    parser.add_argument("--cases", default=None, help="comma-separated subset of the prefill cases (default: all); "
                        "decode then runs the same kinds (e.g. --cases 'linear tvm,linear causal tvm')")
    parser.add_argument("--memory-case", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("TVM_NUM_THREADS", str(args.threads))
    if args.memory_case:
        kind, case, n = json.loads(args.memory_case)
        print(json.dumps(measure_memory(kind, case, n, args.threads)))
        return
    lengths = tuple(int(x) for x in args.lengths.split(",")) if args.lengths else QUICK_LENGTHS if args.quick else LENGTHS
    prefill = tuple(c for c in PREFILL if (c in args.cases.split(",") if args.cases else not (args.quick and c.startswith("hybrid"))))
    decode = tuple(c for c in DECODE if args.cases is None or any(c.split()[0] == p.split()[0] for p in prefill))
    runs = 2 if args.quick else args.runs
    memory = not (args.quick or args.no_memory)
    memory_at = set(int(x) for x in args.memory_lengths.split(",")) if args.memory_lengths else set(lengths)
    print(f"attention layer: {HEADS} heads x {DIM}, batch 1, fp32, {args.threads} threads, N {list(lengths)}, softmax up to "
          f"{args.softmax_max}; load average {os.getloadavg()[0]:.1f}", flush=True)
    check_outputs(args.threads, hybrid=any(c.startswith("hybrid") for c in prefill))
    path: list = []
    prefill_runner("linear tvm", 64, args.threads, path)
    print(f"outputs checked (N=128); the linear kernel is built through {'graphopt.backends.tvm.compile' if path == ['backend'] else 'linear_attention_fast.emit + tvm.compile (the LinearizedAttention converter does not call it yet)'}",
          flush=True)
    result = {"lengths": list(lengths), "threads": args.threads, "softmax_max": args.softmax_max, "linear_path": path[0],
              "prefill_ms": {c: [] for c in prefill}, "decode_ms": {c: [] for c in decode},
              "prefill_median_ms": {c: [] for c in prefill}, "decode_median_ms": {c: [] for c in decode}}
    if memory:
        result["memory_mb"] = {c: [] for c in prefill}
    for n in lengths:
        cases = [c for c in prefill if c.startswith(("linear", "hybrid")) or n <= args.softmax_max]
        timed = interleaved({c: prefill_runner(c, n, args.threads)[0] for c in cases}, runs)
        ms = {c: fastest for c, (fastest, _) in timed.items()}
        for c in prefill:
            result["prefill_ms"][c].append(None if c not in ms else round(ms[c], 3))
            result["prefill_median_ms"][c].append(None if c not in ms else round(timed[c][1], 3))
        timed = interleaved({c: decode_runner(c, n, args.threads) for c in decode}, max(runs, 10), calls=20)
        dms = {c: fastest for c, (fastest, _) in timed.items()}
        for c in decode:
            result["decode_ms"][c].append(round(dms[c], 4))
            result["decode_median_ms"][c].append(round(timed[c][1], 4))
        line = f"N={n:6d} prefill ms: " + ", ".join(f"{c} {_fmt(ms.get(c))}" for c in prefill)
        line += " | decode ms: " + ", ".join(f"{c} {dms[c]:.3f}" for c in decode)
        if memory:
            for c in prefill:
                result["memory_mb"][c].append(memory_in_subprocess("prefill", c, n, args.threads)
                                              if c in cases and n in memory_at else None)
            line += " | RSS growth MB: " + ", ".join(f"{c} {_fmt(result['memory_mb'][c][-1], 0)}" for c in prefill)
        print(line, flush=True)
    pre = result["prefill_ms"]
    result["slope_from_1k"] = {c: loglog_slope(lengths, pre[c]) for c in prefill}
    result["decode_slope_from_1k"] = {c: loglog_slope(lengths, result["decode_ms"][c]) for c in decode}
    result["softmax_over_linear"] = {}
    if {"softmax tvm", "softmax causal tvm", "softmax ort", "linear tvm", "linear causal tvm"} <= set(prefill):
        at = 8192 if 8192 in lengths else max(n for n, t in zip(lengths, pre["softmax tvm"]) if t is not None)
        i = lengths.index(at)
        result["ratio_at"] = at
        result["softmax_over_linear"] = {
            "non-causal (softmax tvm / linear tvm)": round(pre["softmax tvm"][i] / pre["linear tvm"][i], 1),
            "causal (softmax causal tvm / linear causal tvm)": round(pre["softmax causal tvm"][i] / pre["linear causal tvm"][i], 1),
            "ort softmax / linear tvm": round(pre["softmax ort"][i] / pre["linear tvm"][i], 1)}
        if "hybrid w64 tvm" in prefill and "hybrid w64 causal tvm" in prefill:
            result["softmax_over_linear"].update({
                "non-causal (softmax tvm / hybrid w64 tvm)": round(pre["softmax tvm"][i] / pre["hybrid w64 tvm"][i], 1),
                "causal (softmax causal tvm / hybrid w64 causal tvm)": round(pre["softmax causal tvm"][i] / pre["hybrid w64 causal tvm"][i], 1)})
    result["load_average"] = round(os.getloadavg()[0], 1)

    print(f"\n{'N':>6} | " + " | ".join(f"{c:>17}" for c in prefill) + "   (prefill ms)")
    for j, n in enumerate(lengths):
        print(f"{n:>6} | " + " | ".join(f"{_fmt(pre[c][j]):>17}" for c in prefill))
    print("log-log slope of time vs N from 1K: " + ", ".join(f"{c} {_fmt(s, 3)}" for c, s in result["slope_from_1k"].items()))
    if result["softmax_over_linear"]:
        print(f"at N={result['ratio_at']}: " + ", ".join(f"{k} {v}x" for k, v in result["softmax_over_linear"].items()))
    print("decode step ms vs context: " + "; ".join(f"{c} " + " ".join(_fmt(t, 3) for t in result["decode_ms"][c]) for c in decode)
          + "; slopes from 1K: " + ", ".join(f"{c} {_fmt(s, 3)}" for c, s in result["decode_slope_from_1k"].items()))
    if memory:
        print("peak RSS growth MB: " + "; ".join(f"{c} " + " ".join(_fmt(m, 0) for m in result["memory_mb"][c]) for c in prefill))
    print(f"load average at the end {result['load_average']}")
    if args.plot:
        plot(result, args.plot)
        print(f"plot: {args.plot}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
