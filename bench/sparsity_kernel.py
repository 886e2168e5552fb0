"""Decode step of one LLaMA-7B-shaped MLP on tvm-llvm: dense vs CATS vs TEAL with the sparse kernels.

    python -m bench.sparsity_kernel [--runs 20] [--hidden 4096] [--inter 11008] [--weights fp32|int8] [--json out.json]

The MLP (SwiGLU: ``down(silu(x·W_gate) · (x·W_up))``, batch 1, fp32 weights, seeded random, scaled
1/sqrt(fan-in)) is built directly in ONNX three times: dense; CATS (an ActivationThreshold on the
gate activation: gate dense, up and down sparse, bound 1.5x); TEAL (one on x before gate and up,
one on the down projection's input: every projection sparse, bound 2x). The thresholds are graph
inputs, so one build per method covers the sparsity curve: for each target sparsity the threshold
is the quantile of |activation| over calibration inputs (imposed, not calibrated by the passes).
Each model is compiled by graphopt's tvm-llvm backend (its preparation runs ``sparse-linear``),
2 threads, and every runner is timed interleaved in one process (``bench._timing``), cycling
through several inputs so that the rows a sparse step reads differ from call to call as in decode.

``--weights int8``: the same MLP with weight-only int8 weights (int8 per output column, symmetric,
``DequantizeLinear(Wq, s, axis=1)`` in the graph; the zoo's ``-int8-dql`` form). ``sparse-linear`` makes
the thresholded projections ``SparseInputMatMulInt8`` / ``SparseGatedMatMulInt8`` (int8 weights in
the kernels), and CATS's gate (not thresholded) the int8 kernel's dense branch (``int8-dense-matmul``:
an int8 GEMV). The dense build has no threshold, so ``sparse-linear`` leaves it alone, and the
preparation's folding keeps DequantizeLinear at this size (onnxscript's folder preserves Q/DQ): it
dequantizes its weights at run time on every call, TVM's own dense path ("dense" below: the same
backend's dense step of the same int8 model). Two
more runners, timed in the same rounds: "dense fp32", the same MLP with the dequantized values as
float32 weights (what the ``Cast + Mul`` weight-only form becomes: the folding makes it float32), and
"int8 kernels at 0%", the TEAL build with its thresholds at 0 (every projection through the int8
kernels' dense branch, nothing skipped: an int8 GEMV).

Also: one projection [1, 4096] × [4096, 11008] as a lone ``SparseInputMatMul`` built with its dense
branch forced (``dense_below=1``) and with its sparse branch forced (``dense_below=0``), next to the
graphopt dense MatMul: where they cross (``kernels.sparse_matmul.DENSE_BELOW``).
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import onnx_ir as ir

from bench._timing import interleaved_medians

SEED = 20250621
CURVE = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
INPUTS = 6  # distinct decode inputs cycled through (the rows a sparse step reads change each call)
FLOAT = onnx.TensorProto.FLOAT
INT8_DENSE = "int8 kernels at 0%"  # --weights int8: the TEAL build with thresholds 0 (nothing skipped)
FP32_DENSE = "dense fp32"  # --weights int8: the dense MLP with the dequantized values as float32 weights


def _weights(hidden: int, inter: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(SEED)

    def normal(rows, cols):
        return (rng.standard_normal((rows, cols), dtype=np.float32) / np.float32(np.sqrt(rows))).astype(np.float32)

    return {"w_gate": normal(hidden, inter), "w_up": normal(hidden, inter), "w_down": normal(inter, hidden)}


def quantize(weights: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per weight [K, N]: int8 symmetric per output column and its float32 scale [N]."""
    out = {}
    for name, w in weights.items():
        scale = np.where(np.abs(w).max(0) > 0, np.abs(w).max(0) / 127, 1.0).astype(np.float32)
        out[name] = (np.clip(np.rint(w / scale), -127, 127).astype(np.int8), scale)
    return out


def dequantized(quantized: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    return {name: (q.astype(np.float32) * s).astype(np.float32) for name, (q, s) in quantized.items()}


def _threshold(x: str, t: str, y: str) -> onnx.NodeProto:
    return oh.make_node("ActivationThreshold", [x, t], [y], domain="pkg.graphopt")


def mlp_model(weights: dict[str, np.ndarray], method: str, quantized: dict | None = None) -> ir.Model:
    """The MLP as ONNX: ``method`` "dense", "cats" (input t_gate) or "teal" (inputs t_x, t_h); with
    ``quantized`` (``quantize(weights)``) each weight is int8 + scale, dequantized in the graph."""
    hidden = weights["w_gate"].shape[0]
    nodes, inputs = [], [oh.make_tensor_value_info("x", FLOAT, [1, hidden])]
    initializers = [onh.from_array(w, name) for name, w in weights.items()]
    if quantized is not None:
        initializers = [t for name, (q, scale) in quantized.items()
                        for t in (onh.from_array(q, f"{name}_q"), onh.from_array(scale, f"{name}_s"))]
        nodes += [oh.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s"], [name], axis=1) for name in quantized]
    x = "x"
    if method == "teal":
        nodes.append(_threshold("x", "t_x", "x_sparse"))
        x = "x_sparse"
    nodes += [oh.make_node("MatMul", [x, "w_gate"], ["gate"]), oh.make_node("Sigmoid", ["gate"], ["sig"]),
              oh.make_node("Mul", ["gate", "sig"], ["act"]), oh.make_node("MatMul", [x, "w_up"], ["up"])]
    act = "act"
    if method == "cats":
        nodes.append(_threshold("act", "t_gate", "act_sparse"))
        act = "act_sparse"
    nodes.append(oh.make_node("Mul", [act, "up"], ["h"]))
    h = "h"
    if method == "teal":
        nodes.append(_threshold("h", "t_h", "h_sparse"))
        h = "h_sparse"
    nodes.append(oh.make_node("MatMul", [h, "w_down"], ["y"]))
    thresholds = {"dense": [], "cats": ["t_gate"], "teal": ["t_x", "t_h"]}[method]
    inputs += [oh.make_tensor_value_info(t, FLOAT, []) for t in thresholds]
    graph = oh.make_graph(nodes, f"mlp_{method}", inputs, [oh.make_tensor_value_info("y", FLOAT, [1, hidden])], initializers)
    proto = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17), oh.make_opsetid("pkg.graphopt", 1)])
    return ir.serde.deserialize_model(proto)


def _silu(v: np.ndarray) -> np.ndarray:
    return v / (1.0 + np.exp(-v))


def thresholds(weights: dict[str, np.ndarray], sparsity: float, samples: int = 16) -> dict[str, dict[str, np.ndarray]]:
    """Per method, the threshold inputs that zero ``sparsity`` of each thresholded tensor (quantile of |v|)."""
    rng = np.random.default_rng(SEED + 1)
    x = rng.standard_normal((samples, weights["w_gate"].shape[0]), dtype=np.float32)
    act = _silu(x @ weights["w_gate"])
    x_t = np.where(np.abs(x) > np.quantile(np.abs(x), sparsity), x, 0)
    h_t = _silu(x_t @ weights["w_gate"]) * (x_t @ weights["w_up"])  # TEAL's down input, after its own x threshold

    def q(v):
        return np.asarray(np.quantile(np.abs(v), sparsity), np.float32)

    return {"dense": {}, "cats": {"t_gate": q(act)}, "teal": {"t_x": q(x), "t_h": q(h_t)}}


def decode_inputs(hidden: int, count: int = INPUTS) -> list[np.ndarray]:
    rng = np.random.default_rng(SEED + 2)
    return [rng.standard_normal((1, hidden), dtype=np.float32) for _ in range(count)]


def _runner(artifact, feeds_list: list[dict[str, np.ndarray]]):
    """A call that cycles through the prepared arguments (conversions outside the timing)."""
    main = artifact.vm["main"]
    arguments = [artifact._arguments(feeds) for feeds in feeds_list]
    state = {"i": 0}

    def run():
        state["i"] = (state["i"] + 1) % len(arguments)
        return main(*arguments[state["i"]])

    return run


def compile_methods(weights: dict[str, np.ndarray], threads: int, quantized: dict | None = None) -> dict[str, object]:
    from graphopt.backends import tvm as tvm_backend  # noqa: PLC0415

    artifacts = {}
    for method in ("dense", "cats", "teal"):
        model = mlp_model(weights, method, quantized)
        feeds = {"x": decode_inputs(model.graph.inputs[0].shape[1], 1)[0],
                 **thresholds_stub(method)}
        artifacts[method] = tvm_backend.compile(model, target="tvm-llvm", threads=threads, example_inputs=feeds)
        rewrites = [p["rewrites"] for p in artifacts[method].details["prepare"] if p["pass"] == "sparse-linear"]
        print(f"compiled {method}: {artifacts[method].details['build_seconds']} s build, sparse-linear {rewrites}", flush=True)
    if quantized is not None:
        artifacts[FP32_DENSE] = tvm_backend.compile(mlp_model(weights, "dense"), target="tvm-llvm", threads=threads)
        artifacts[INT8_DENSE] = artifacts["teal"]  # with its thresholds at 0: every projection through the int8 kernels
    return artifacts


def thresholds_stub(method: str) -> dict[str, np.ndarray]:
    names = {"dense": [], "cats": ["t_gate"], "teal": ["t_x", "t_h"]}[method]
    return {name: np.asarray(0.0, np.float32) for name in names}


def _reference(weights, method: str, x: np.ndarray, t: dict[str, np.ndarray]) -> np.ndarray:
    def cut(v, name):
        return np.where(np.abs(v) > t[name], v, 0) if name in t else v

    x = cut(x, "t_x")
    h = cut(_silu(x @ weights["w_gate"]), "t_gate") * (x @ weights["w_up"])
    return cut(h, "t_h") @ weights["w_down"]


def _achieved(weights, method: str, xs: list[np.ndarray], t: dict[str, np.ndarray]) -> dict[str, float]:
    """Zeros actually imposed on the decode inputs, per thresholded tensor."""
    out = {}
    for x in xs:
        x_t = np.where(np.abs(x) > t["t_x"], x, 0) if "t_x" in t else x
        values = {"t_x": x, "t_gate": _silu(x_t @ weights["w_gate"]),
                  "t_h": _silu(x_t @ weights["w_gate"]) * (x_t @ weights["w_up"])}
        for name in t:
            out.setdefault(name, []).append(float(np.mean(np.abs(values[name]) <= t[name])))
    return {name: round(float(np.mean(v)), 3) for name, v in out.items()}


def mlp_curve(weights, artifacts, runs: int, sparsities=CURVE) -> list[dict]:
    """Per sparsity, ms of dense / CATS / TEAL steps timed interleaved, speedups and achieved sparsity."""
    xs = decode_inputs(weights["w_gate"].shape[0])
    rows = []
    for s in sparsities:
        t = thresholds(weights, s)
        runners, achieved = {}, {}
        for method, artifact in artifacts.items():
            if method in (INT8_DENSE, FP32_DENSE):
                zeros = {name: np.zeros((), np.float32) for name in t["teal"]} if method == INT8_DENSE else {}
                runners[method] = _runner(artifact, [{"x": x, **zeros} for x in xs])
                continue
            feeds = [{"x": x, **t[method]} for x in xs]
            got = artifact.run(feeds[0])["y"]
            expected = _reference(weights, method, xs[0], t[method])
            assert np.allclose(got, expected, rtol=1e-3, atol=1e-3 * float(np.abs(expected).max())), f"{method} at {s}: wrong output"
            runners[method] = _runner(artifact, feeds)
            achieved[method] = _achieved(weights, method, xs, t[method])
        ms = interleaved_medians(runners, runs, per_round=2)
        row = {"sparsity": s, "ms": {k: round(v, 3) for k, v in ms.items()}, "achieved": achieved,
               "speedup": {m: round(ms["dense"] / ms[m], 3) for m in ("cats", "teal")}}
        for baseline in (FP32_DENSE, INT8_DENSE):
            if baseline in ms:
                row[f"speedup_vs_{baseline}"] = {m: round(ms[baseline] / ms[m], 3) for m in ("cats", "teal")}
        print(f"sparsity {s:.2f}: dense {ms['dense']:.2f} ms, cats {ms['cats']:.2f} ms ({row['speedup']['cats']:.2f}x), "
              f"teal {ms['teal']:.2f} ms ({row['speedup']['teal']:.2f}x); achieved {achieved['cats']} {achieved['teal']}"
              + "".join(f"; {b} {ms[b]:.2f} ms (cats {row[f'speedup_vs_{b}']['cats']:.2f}x, teal {row[f'speedup_vs_{b}']['teal']:.2f}x)"
                        for b in (FP32_DENSE, INT8_DENSE) if b in ms), flush=True)
        rows.append(row)
    return rows


def kernel_crossover(weights, runs: int, threads: int, sparsities=(0.0, 0.02, 0.05, 0.1, 0.2),
                     quantized: dict | None = None) -> list[dict]:
    """One projection: the kernel's forced-dense and forced-sparse branches vs graphopt's dense MatMul
    (with ``quantized``: the int8 kernel's two branches too)."""
    import tvm  # noqa: PLC0415

    from graphopt.backends import tvm as tvm_backend  # noqa: PLC0415
    from graphopt.backends.tvm import targets  # noqa: PLC0415
    from graphopt.backends.tvm.cpu.common import vector_lanes  # noqa: PLC0415
    from graphopt.backends.tvm.kernels import sparse_matmul  # noqa: PLC0415

    w = weights["w_up"]
    k, n = w.shape
    target = targets.resolve("tvm-llvm").tvm_target()
    lanes = vector_lanes(target, "float32")
    step = threads * lanes * sparse_matmul.VECTORS
    width = (n + step - 1) // step * step
    device = tvm.cpu(0)
    w_dev = tvm.runtime.tensor(np.pad(w, ((0, 0), (0, width - n))), device)
    y_dev = tvm.runtime.tensor(np.zeros((1, width), np.float32), device)
    kernels = {name: tvm.compile(tvm.IRModule({"main": sparse_matmul.input_func(1, k, width, lanes, threads, below)}),
                                 target=target)["main"] for name, below in (("kernel dense branch", 1.0), ("kernel sparse branch", 0.0))}
    int8_kernels, int8_weights = {}, ()
    if quantized is not None:
        q, scale = quantized["w_up"]
        int8_weights = (tvm.runtime.tensor(np.pad(q, ((0, 0), (0, width - n))), device),
                        tvm.runtime.tensor(np.pad(scale, (0, width - n)), device))
        int8_kernels = {name: tvm.compile(tvm.IRModule({"main": sparse_matmul.input_int8_func(1, k, width, lanes, threads, below)}),
                                          target=target)["main"]
                        for name, below in (("int8 kernel dense branch", 1.0), ("int8 kernel sparse branch", 0.0))}
    graph = oh.make_graph([oh.make_node("MatMul", ["x", "w"], ["y"])], "projection",
                          [oh.make_tensor_value_info("x", FLOAT, [1, k])], [oh.make_tensor_value_info("y", FLOAT, [1, n])],
                          [onh.from_array(w, "w")])
    dense = tvm_backend.compile(ir.serde.deserialize_model(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])),
                                target="tvm-llvm", threads=threads)
    rng = np.random.default_rng(SEED + 3)
    rows = []
    for s in sparsities:
        xs = [rng.standard_normal((1, k), dtype=np.float32) for _ in range(INPUTS)]
        for x in xs:
            x[:, rng.random(k) < s] = 0
        runners = {name: _cycle(func, [(tvm.runtime.tensor(x, device), w_dev, y_dev) for x in xs]) for name, func in kernels.items()}
        runners |= {name: _cycle(func, [(tvm.runtime.tensor(x, device), *int8_weights, y_dev) for x in xs])
                    for name, func in int8_kernels.items()}
        runners["graphopt dense MatMul"] = _runner(dense, [{"x": x} for x in xs])
        ms = interleaved_medians(runners, runs, per_round=2)
        rows.append({"sparsity": s, "ms": {name: round(v, 3) for name, v in ms.items()}})
        print(f"projection, sparsity {s:.2f}: " + ", ".join(f"{name} {v:.2f} ms" for name, v in ms.items()), flush=True)
    return rows


def _cycle(func, argument_list):
    state = {"i": 0}

    def run():
        state["i"] = (state["i"] + 1) % len(argument_list)
        return func(*argument_list[state["i"]])

    return run


def crossover(rows: list[dict], method: str, key: str = "speedup") -> float | None:
    """The sparsity above which ``method`` stays faster than dense (``key``: against which baseline):
    linear between the last curve point below 1x and the next (0.0: faster everywhere; None: never faster)."""
    points = [(r["sparsity"], r[key][method]) for r in rows]
    slower = [i for i, (_, v) in enumerate(points) if v < 1]
    if not slower:
        return 0.0
    i = slower[-1]
    if i + 1 == len(points):
        return None
    (s0, v0), (s1, v1) = points[i], points[i + 1]
    return round(s0 + (1 - v0) * (s1 - s0) / (v1 - v0), 3)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--inter", type=int, default=11008)
    parser.add_argument("--weights", choices=("fp32", "int8"), default="fp32",
                        help="int8: weight-only int8 (DequantizeLinear per output column) through the int8 kernels")
    parser.add_argument("--json", default=None, help="write the measurements here")
    args = parser.parse_args(argv)
    print(f"MLP {args.hidden} -> {args.inter} -> {args.hidden}, SwiGLU, batch 1, {args.weights} weights, tvm-llvm, "
          f"{args.threads} threads; load average {os.getloadavg()[0]:.1f}", flush=True)
    weights = _weights(args.hidden, args.inter)
    quantized = quantize(weights) if args.weights == "int8" else None
    if quantized is not None:
        weights = dequantized(quantized)  # the values every build computes with (reference, thresholds)
    artifacts = compile_methods(weights, args.threads, quantized)
    curve = mlp_curve(weights, artifacts, args.runs)
    del artifacts
    projection = kernel_crossover(weights, args.runs, args.threads, quantized=quantized)
    result = {"shape": [args.hidden, args.inter], "weights": args.weights, "threads": args.threads, "runs": args.runs, "curve": curve,
              "crossover": {m: crossover(curve, m) for m in ("cats", "teal")}, "projection": projection,
              "load_average_end": os.getloadavg()[0]}
    for baseline in (FP32_DENSE, INT8_DENSE) if quantized is not None else ():
        result[f"crossover_vs_{baseline}"] = {m: crossover(curve, m, f"speedup_vs_{baseline}") for m in ("cats", "teal")}
    at_half = next(r for r in curve if r["sparsity"] == 0.5)
    print(f"at 50%: CATS {at_half['speedup']['cats']:.2f}x (target >= 1.35x, bound 1.5x), TEAL {at_half['speedup']['teal']:.2f}x "
          f"(target >= 1.6x, bound 2x); crossover {result['crossover']}; load average {os.getloadavg()[0]:.1f}")
    for baseline in (FP32_DENSE, INT8_DENSE) if quantized is not None else ():
        print(f"at 50% vs {baseline}: {at_half[f'speedup_vs_{baseline}']}; crossover {result[f'crossover_vs_{baseline}']}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
