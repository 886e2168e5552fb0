"""Decode step of one LLaMA-7B-shaped MLP on tvm-llvm: dense vs CATS vs TEAL with the sparse kernels.

    python -m bench.sparsity_kernel [--runs 20] [--hidden 4096] [--inter 11008] [--json out.json]

The MLP (SwiGLU: ``down(silu(x·W_gate) · (x·W_up))``, batch 1, fp32 weights, seeded random, scaled
1/sqrt(fan-in)) is built directly in ONNX three times: dense; CATS (an ActivationThreshold on the
gate activation: gate dense, up and down sparse, bound 1.5x); TEAL (one on x before gate and up,
one on the down projection's input: every projection sparse, bound 2x). The thresholds are graph
inputs, so one build per method covers the sparsity curve: for each target sparsity the threshold
is the quantile of |activation| over calibration inputs (imposed, not calibrated by the passes).
Each model is compiled by graphopt's tvm-llvm backend (its preparation runs ``sparse-linear``),
2 threads, and every runner is timed interleaved in one process (``bench._timing``), cycling
through several inputs so that the rows a sparse step reads differ from call to call as in decode.

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


def _weights(hidden: int, inter: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(SEED)

    def normal(rows, cols):
        return (rng.standard_normal((rows, cols), dtype=np.float32) / np.float32(np.sqrt(rows))).astype(np.float32)

    return {"w_gate": normal(hidden, inter), "w_up": normal(hidden, inter), "w_down": normal(inter, hidden)}


def _threshold(x: str, t: str, y: str) -> onnx.NodeProto:
    return oh.make_node("ActivationThreshold", [x, t], [y], domain="pkg.graphopt")


def mlp_model(weights: dict[str, np.ndarray], method: str) -> ir.Model:
    """The MLP as ONNX: ``method`` "dense", "cats" (input t_gate) or "teal" (inputs t_x, t_h)."""
    hidden = weights["w_gate"].shape[0]
    nodes, inputs = [], [oh.make_tensor_value_info("x", FLOAT, [1, hidden])]
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
    graph = oh.make_graph(nodes, f"mlp_{method}", inputs, [oh.make_tensor_value_info("y", FLOAT, [1, hidden])],
                          [onh.from_array(w, name) for name, w in weights.items()])
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


def compile_methods(weights: dict[str, np.ndarray], threads: int) -> dict[str, object]:
    from graphopt.backends import tvm as tvm_backend  # noqa: PLC0415

    artifacts = {}
    for method in ("dense", "cats", "teal"):
        model = mlp_model(weights, method)
        feeds = {"x": decode_inputs(model.graph.inputs[0].shape[1], 1)[0],
                 **thresholds_stub(method)}
        artifacts[method] = tvm_backend.compile(model, target="tvm-llvm", threads=threads, example_inputs=feeds)
        rewrites = [p["rewrites"] for p in artifacts[method].details["prepare"] if p["pass"] == "sparse-linear"]
        print(f"compiled {method}: {artifacts[method].details['build_seconds']} s build, sparse-linear {rewrites}", flush=True)
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
            feeds = [{"x": x, **t[method]} for x in xs]
            got = artifact.run(feeds[0])["y"]
            expected = _reference(weights, method, xs[0], t[method])
            assert np.allclose(got, expected, rtol=1e-3, atol=1e-3 * float(np.abs(expected).max())), f"{method} at {s}: wrong output"
            runners[method] = _runner(artifact, feeds)
            achieved[method] = _achieved(weights, method, xs, t[method])
        ms = interleaved_medians(runners, runs, per_round=2)
        row = {"sparsity": s, "ms": {k: round(v, 3) for k, v in ms.items()}, "achieved": achieved,
               "speedup": {m: round(ms["dense"] / ms[m], 3) for m in ("cats", "teal")}}
        print(f"sparsity {s:.2f}: dense {ms['dense']:.2f} ms, cats {ms['cats']:.2f} ms ({row['speedup']['cats']:.2f}x), "
              f"teal {ms['teal']:.2f} ms ({row['speedup']['teal']:.2f}x); achieved {achieved['cats']} {achieved['teal']}", flush=True)
        rows.append(row)
    return rows


def kernel_crossover(weights, runs: int, threads: int, sparsities=(0.0, 0.02, 0.05, 0.1, 0.2)) -> list[dict]:
    """One projection: the kernel's forced-dense and forced-sparse branches vs graphopt's dense MatMul."""
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


def crossover(rows: list[dict], method: str) -> float | None:
    """The sparsity above which ``method`` stays faster than dense: linear between the last curve point
    below 1x and the next (0.0: faster everywhere; None: never faster)."""
    points = [(r["sparsity"], r["speedup"][method]) for r in rows]
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
    parser.add_argument("--json", default=None, help="write the measurements here")
    args = parser.parse_args(argv)
    print(f"MLP {args.hidden} -> {args.inter} -> {args.hidden}, SwiGLU, batch 1, fp32, tvm-llvm, {args.threads} threads; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    weights = _weights(args.hidden, args.inter)
    artifacts = compile_methods(weights, args.threads)
    curve = mlp_curve(weights, artifacts, args.runs)
    del artifacts
    projection = kernel_crossover(weights, args.runs, args.threads)
    result = {"shape": [args.hidden, args.inter], "threads": args.threads, "runs": args.runs, "curve": curve,
              "crossover": {m: crossover(curve, m) for m in ("cats", "teal")}, "projection": projection,
              "load_average_end": os.getloadavg()[0]}
    at_half = next(r for r in curve if r["sparsity"] == 0.5)
    print(f"at 50%: CATS {at_half['speedup']['cats']:.2f}x (target >= 1.35x, bound 1.5x), TEAL {at_half['speedup']['teal']:.2f}x "
          f"(target >= 1.6x, bound 2x); crossover {result['crossover']}; load average {os.getloadavg()[0]:.1f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
