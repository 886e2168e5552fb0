"""Decode-step time vs context length: the recurrent linear-attention state vs the KV cache.

    python -m bench.linear_decode [--lengths 128,1024,4096,16384] [--runs 40] [--threads 1]
                                  [--no-tvm] [--no-model] [--no-perplexity] [--json out.json] [--quick]

Three forms of one decode step (one new token), each built by graphopt's passes from the same
softmax decode graph (``Concat(past_key, k)``, ``Concat(past_value, v)`` -> attention, present_*):

- ``softmax``: ``attention`` only: softmax attention over the N cached keys (cost ∝ N);
- ``linear/cache``: ``attention,linear-attention``: the non-causal linear form over the cache
  (φ of every cached key, Kfᵀ·V: cost ∝ N);
- ``recurrent``: ``attention,linear-attention,linear-attention-state``: ``LinearAttentionStep`` on
  the carried state (S [H, F, Dv], z [H, 1, F]): the same work whatever N.

1. one layer, 12 heads x 64, batch 1, fp32, on ONNX Runtime (optimizations on, ``--threads``) and
   tvm-llvm (graphopt's backend, shapes from the feeds; one compile per length for the two cache
   forms, one for the recurrent graph);
2. the trained stdlib-llama decoder (4 layers, GQA 4/2 heads x 48) on ONNX Runtime: its exported
   decode graph (softmax KV cache), after ``linear-attention``, and after ``linear-attention-state``
   (the cache is random; the positions are real, RoPE has no table to run out of); the recurrent
   graph also on tvm-llvm (one compile, shapes independent of the context);
3. held-out perplexity of stdlib-llama with linear attention (elu+1, no fine-tuning): the prefill
   form (``linear-attention(causal=always)`` on whole windows) vs the recurrent graphs (prefill of
   the first token, then one decode step per token carrying the states), with softmax for context.

Times are medians of interleaved calls (``bench._timing.interleaved_medians``), so load drifts hit
every form alike; each row prints ratios to the recurrent step at the same length.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from ._timing import interleaved_medians

HEADS, DIM, SEED = 12, 64, 20261206
LENGTHS = (128, 1024, 4096, 16384)
QUICK_LENGTHS = (128, 1024)
FORMS = {"softmax": "attention", "linear/cache": "attention,linear-attention",
         "recurrent": "attention,linear-attention,linear-attention-state"}
MODEL_FORMS = {"softmax": "canonicalize", "linear/cache": "canonicalize,linear-attention",
               "recurrent": "canonicalize,linear-attention,linear-attention-state"}


def layer_source(heads: int = HEADS, dim: int = DIM) -> str:
    """One softmax decode-step layer over a KV cache of symbolic length, as ONNX text."""
    one, past = f"float[1,{heads},1,{dim}]", f"float[1,{heads},past,{dim}]"
    total = f"float[1,{heads},total,{dim}]"
    return (f'<ir_version: 10, opset_import: ["": 18]>\ndecode ({one} Q, {one} k, {one} v, {past} past_key, {past} past_value)'
            f" => ({one} Y, {total} present_key, {total} present_value) {{\n"
            "    K = Concat <axis = 2> (past_key, k)\n    V = Concat <axis = 2> (past_value, v)\n"
            "    kt = Transpose <perm = [0, 1, 3, 2]> (K)\n    s = MatMul (Q, kt)\n"
            f"    c = Constant <value = float {{{dim ** -0.5}}}> ()\n    sc = Mul (s, c)\n"
            "    p = Softmax <axis = -1> (sc)\n    Y = MatMul (p, V)\n"
            "    present_key = Identity (K)\n    present_value = Identity (V)\n}")


def layer_models() -> dict:
    import onnx  # noqa: PLC0415
    import onnx_ir as ir  # noqa: PLC0415

    from graphopt.pipeline import run_pipeline  # noqa: PLC0415

    models = {}
    for form, pipeline in FORMS.items():
        model = ir.serde.deserialize_model(onnx.parser.parse_model(layer_source()))
        run_pipeline(model, pipeline)
        models[form] = model
    return models


def layer_feeds(form: str, n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(SEED)
    q, k, v = (rng.standard_normal((1, HEADS, 1, DIM), dtype=np.float32) for _ in range(3))
    if form == "recurrent":
        return {"Q": q, "k": k, "v": v, "past_sequence_length": np.array([n], np.int64),
                "past_state_S_0": rng.standard_normal((1, HEADS, DIM, DIM), dtype=np.float32),
                "past_state_z_0": np.abs(rng.standard_normal((1, HEADS, 1, DIM), dtype=np.float32)) * n}
    cache = rng.standard_normal((2, 1, HEADS, n, DIM), dtype=np.float32)
    return {"Q": q, "k": k, "v": v, "past_key": cache[0], "past_value": cache[1]}


def ort_runner(model, feeds: dict, threads: int):
    import onnx_ir as ir  # noqa: PLC0415
    import onnxruntime as ort  # noqa: PLC0415

    from graphopt import ops  # noqa: PLC0415

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    ops.attach_functions(model)  # the graphopt ops' function bodies, which ORT runs
    session = ort.InferenceSession(ir.serde.serialize_model(model).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    feeds = {k: v for k, v in feeds.items() if k in names}
    return lambda: session.run(None, feeds)


def tvm_runner(model, feeds: dict, threads: int):
    from graphopt.backends import tvm as tvm_backend  # noqa: PLC0415

    artifact = tvm_backend.compile(model, target="tvm-llvm", threads=threads, example_inputs=feeds)
    main, arguments = artifact.vm["main"], artifact._arguments(feeds)
    return lambda: main(*arguments)


def bench_layer(lengths, runs: int, threads: int, backends) -> list[dict]:
    models = layer_models()
    rows = []
    recurrent_tvm = None
    for n in lengths:
        runners = {}
        for backend in backends:
            for form, model in models.items():
                feeds = layer_feeds(form, n)
                if backend == "ort":
                    runners[(backend, form)] = ort_runner(model, feeds, threads)
                elif form == "recurrent":  # one compile serves every length: the state's shape is fixed
                    recurrent_tvm = recurrent_tvm or tvm_runner(model, feeds, threads)
                    runners[(backend, form)] = recurrent_tvm
                else:
                    runners[(backend, form)] = tvm_runner(model, feeds, threads)
        times = interleaved_medians(runners, runs)
        for backend in backends:
            row = {"context": n, "backend": backend, **{form: round(times[(backend, form)], 4) for form in models}}
            rows.append(row)
            print(_line(row), flush=True)
    return rows


def _line(row: dict) -> str:
    base = row["recurrent"]
    parts = [f"{form} {row[form] * 1e3:8.1f} us ({row[form] / base:5.1f}x)" for form in FORMS]
    return f"  N={row['context']:>6} {row['backend']:>4}: " + "  ".join(parts)


# --- stdlib-llama ---------------------------------------------------------------------------------------


def llama_graphs() -> dict:
    import onnx_ir as ir  # noqa: PLC0415

    from graphopt.models import stdlib_llama  # noqa: PLC0415
    from graphopt.pipeline import run_pipeline  # noqa: PLC0415

    graphs = {}
    for form, pipeline in MODEL_FORMS.items():
        model = ir.serde.deserialize_model(stdlib_llama.build(graph="decode"))
        run_pipeline(model, pipeline)
        graphs[form] = model
    prefill = ir.serde.deserialize_model(stdlib_llama.build(graph="prefill"))
    run_pipeline(prefill, "canonicalize,linear-attention(causal=always),linear-attention-state")
    graphs["prefill"] = prefill
    return graphs


def llama_feeds(model, n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(SEED)
    feeds = {}
    for value in model.graph.inputs:
        if value.name == "input_ids":
            feeds[value.name] = np.array([[65]], np.int64)
        elif value.name == "past_sequence_length":
            feeds[value.name] = np.array([n], np.int64)
        else:
            shape = [1 if not isinstance(d, int) and str(d) == "batch" else n if not isinstance(d, int) else d
                     for d in value.shape]
            array = rng.standard_normal(shape, dtype=np.float32)
            feeds[value.name] = np.abs(array) * (n if value.name.startswith("past_state_z") else 1)
    return feeds


def bench_model(graphs: dict, lengths, runs: int, threads: int, tvm: bool) -> list[dict]:
    rows = []
    recurrent_tvm = None
    for n in lengths:
        runners = {form: ort_runner(graphs[form], llama_feeds(graphs[form], n), threads) for form in MODEL_FORMS}
        if tvm:  # the recurrent graph only: one compile serves every length (the cache forms would need one each)
            recurrent_tvm = recurrent_tvm or tvm_runner(graphs["recurrent"], llama_feeds(graphs["recurrent"], n), threads)
            runners["recurrent tvm"] = recurrent_tvm
        times = interleaved_medians(runners, runs)
        row = {"context": n, "backend": "ort", **{form: round(times[form], 4) for form in MODEL_FORMS}}
        if tvm:
            row["recurrent tvm"] = round(times["recurrent tvm"], 4)
        rows.append(row)
        print(_line(row) + (f"  | tvm-llvm recurrent {row['recurrent tvm'] * 1e3:8.1f} us" if tvm else ""), flush=True)
    return rows


def perplexities(graphs: dict, count: int, seq_len: int) -> dict[str, float]:
    """Held-out perplexity: softmax, linear prefill form, linear recurrent (prefill 1 token + decode steps)."""
    import onnx_ir as ir  # noqa: PLC0415

    from graphopt import testing  # noqa: PLC0415
    from graphopt.models import stdlib_llama  # noqa: PLC0415
    from graphopt.pipeline import run_pipeline  # noqa: PLC0415

    def prefill_graph(pipeline: str):
        model = ir.serde.deserialize_model(stdlib_llama.build(graph="prefill"))
        run_pipeline(model, pipeline)
        return model

    softmax = prefill_graph("canonicalize")
    linear = prefill_graph("canonicalize,linear-attention(causal=always)")
    prefill, decode = graphs["prefill"], graphs["recurrent"]
    prefill_names = [o.name for o in prefill.graph.outputs]
    decode_names = [o.name for o in decode.graph.outputs]

    def recurrent(feeds):
        tokens = feeds["input_ids"]
        out = dict(zip(prefill_names, testing.run_ort(prefill, {"input_ids": tokens[:, :1]})))
        logits = [out["logits"]]
        for t in range(1, tokens.shape[1]):
            state = {k.replace("present_", "past_"): v for k, v in out.items() if k.startswith("present_state")}
            out = dict(zip(decode_names, testing.run_ort(decode, {"input_ids": tokens[:, t:t + 1],
                                                                  "past_sequence_length": np.array([t], np.int64), **state})))
            logits.append(out["logits"])
        return np.concatenate(logits, axis=1)

    return {name: stdlib_llama.perplexity(runner, count=count, seq_len=seq_len, batch=count) for name, runner in (
        ("softmax", lambda f: testing.run_ort(softmax, f)), ("linear prefill", lambda f: testing.run_ort(linear, f)),
        ("linear recurrent", recurrent))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", default=",".join(map(str, LENGTHS)))
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-tvm", action="store_true")
    parser.add_argument("--no-model", action="store_true")
    parser.add_argument("--no-perplexity", action="store_true")
    parser.add_argument("--windows", type=int, default=8, help="held-out windows for the perplexity")
    parser.add_argument("--window-length", type=int, default=128)
    parser.add_argument("--quick", action="store_true", help=f"lengths {QUICK_LENGTHS}, 10 runs, 2 windows of 32")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    lengths = QUICK_LENGTHS if args.quick else tuple(int(x) for x in args.lengths.split(","))
    runs = 10 if args.quick else args.runs
    windows, window_length = (2, 32) if args.quick else (args.windows, args.window_length)
    load = os.getloadavg()
    print(f"decode step, medians of interleaved calls, {args.threads} thread(s); load {load[0]:.2f} {load[1]:.2f}")
    report = {"threads": args.threads, "load": load}
    print(f"one layer {HEADS}x{DIM}, batch 1, fp32 (ratios: to the recurrent step)")
    report["layer"] = bench_layer(lengths, runs, args.threads, ("ort",) if args.no_tvm else ("ort", "tvm"))
    graphs = None
    if not args.no_model:
        graphs = llama_graphs()
        print("stdlib-llama decode step (4 layers), ONNX Runtime (and the recurrent graph on tvm-llvm)")
        report["stdlib_llama"] = bench_model(graphs, lengths, runs, args.threads, not args.no_tvm)
    if not args.no_perplexity:
        graphs = graphs or llama_graphs()
        ppl = perplexities(graphs, windows, window_length)
        report["perplexity"] = {"windows": windows, "window_length": window_length, **ppl}
        print(f"stdlib-llama held-out perplexity ({windows} windows of {window_length}): "
              + ", ".join(f"{k} {v:.4f}" for k, v in ppl.items()))
    report["load_after"] = os.getloadavg()
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
