"""Shifts on integer activations vs int8 multiplies: one [K, N] layer on tvm-llvm, and the digits ViT end to end.

    python -m bench.shift_integer [--k 4096] [--n 4096] [--rows 1,128] [--runs 30] [--threads 2] [--json out.json]
    python -m bench.shift_integer --vit [--runs 50] [--json out.json]
    python -m bench.shift_integer --minilm [--json out.json]

Layer (int8 activations in, int32 accumulator out; W seeded N(0, 1/K), int8 per column as ``int8-linear``
makes it, then ``shift-integer``'s fit of it): every runner is built by graphopt's tvm-llvm backend with
the same thread count and timed interleaved in one process (``bench._timing``):

- ``int8 vnni``: ``MatMulInteger`` on the host target (``vpdpbusd`` where the host has VNNI);
- ``int8 avx2``: the same model with VNNI switched off in ``mattr`` (the ``vpmaddubsw`` kernels, as ``bench.tvm``);
- ``shift int``: ``ShiftMatMulInteger`` on the host target (AVX-512: 16-lane ``vpsllvd``);
- ``shift int avx2``: the same, built with AVX-512 off (``-avx512f``: 8-lane AVX2 shifts), i.e. an AVX2-only CPU;
- ``int8 avx2-only``: ``MatMulInteger`` built with AVX-512 off too (what an AVX2-only CPU runs);
- ``shift float``: ``ShiftMatMul`` (float activations, ``shift-linear``) and ``fp32 dense``: ``MatMul``.

The integer outputs are checked bit for bit against numpy (``x @ Wq`` and the op's reference).

``--vit``: the digits ViT (``models/digits_vit.py``) through ``ivit`` and ``ivit-shift`` (calibration on 256
training images): top-1 on the test split in ONNX Runtime (optimizations off, post-training) and batch-1
latency on tvm-llvm (host target and AVX2-only), interleaved; tvm-llvm's output equals ONNX Runtime's
bit for bit on the first test images.

``--minilm``: pretrained all-MiniLM-L6-v2 (seq 128) through ``ivit`` and ``ivit-shift``, calibration on 28
sentences: mean / min cosine of the mean-pooled embeddings vs FP32 on the held-out ones (ORT, optimizations
off), as ``bench.shift --accuracy``.
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("TVM_NUM_THREADS", "2")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnx.helper as oh  # noqa: E402
import onnx.numpy_helper as onh  # noqa: E402
import onnx_ir as ir  # noqa: E402

from bench._timing import interleaved_medians  # noqa: E402

SEED = 20251206
INPUTS = 4


def _targets() -> dict[str, str]:
    from graphopt.backends.tvm import targets  # noqa: PLC0415

    config = targets.host_target_config()
    mattr = config.get("mattr", [])
    return {"host": "tvm-llvm",
            "no-vnni": json.dumps({**config, "mattr": [*mattr, "-avx512vnni", "-avxvnni"]}),
            "avx2-only": json.dumps({**config, "mattr": [*mattr, "-avx512f", "-avx512vnni", "-avxvnni"]})}


def _model(nodes, inputs, outputs, initializers, graphopt_ops: bool = False) -> ir.Model:
    from graphopt import ops  # noqa: PLC0415

    opsets = [oh.make_opsetid("", 21)] + ([oh.make_opsetid(ops.DOMAIN, ops.OPSET_VERSION)] if graphopt_ops else [])
    model = ir.serde.deserialize_model(oh.make_model(oh.make_graph(nodes, "layer", inputs, outputs, initializers),
                                                     opset_imports=opsets))
    if graphopt_ops:
        ops.attach_functions(model)
    return model


def layer_models(k: int, n: int, rows: int) -> tuple[dict[str, ir.Model], dict]:
    """The int8, integer-shift, float-shift and fp32 layers of one seeded weight, and what the checks need."""
    from graphopt import ops  # noqa: PLC0415
    from graphopt.ops.shift_matmul import pack  # noqa: PLC0415
    from graphopt.passes.int8_linear import quantize_weight  # noqa: PLC0415
    from graphopt.passes.shift_integer import integer_shift_weights  # noqa: PLC0415

    from .shift import layer_model, shifted  # noqa: PLC0415

    rng = np.random.default_rng(SEED)
    w = (rng.standard_normal((k, n), dtype=np.float32) / np.float32(np.sqrt(k))).astype(np.float32)
    wq = quantize_weight(w, 1.0, None, per_channel=True, axis=1)[0].astype(np.int8)
    shifts, _ = integer_shift_weights(wq, None)
    p = pack(shifts.codes)
    x_int8 = oh.make_tensor_value_info("x", onnx.TensorProto.INT8, [rows, k])
    y_int32 = oh.make_tensor_value_info("y", onnx.TensorProto.INT32, [rows, n])
    int8 = _model([oh.make_node("MatMulInteger", ["x", "w"], ["y"])], [x_int8], [y_int32], [onh.from_array(wq, "w")])
    shift_int = _model([oh.make_node("ShiftMatMulInteger", ["x", "p"], ["y"], domain=ops.DOMAIN, bits=5, zero_free=0)],
                       [x_int8], [y_int32], [onh.from_array(p, "p")], graphopt_ops=True)
    dense = layer_model(w, rows)
    shift_float = shifted(dense, [{"x": rng.standard_normal((rows, k), dtype=np.float32)} for _ in range(4)])
    return {"int8": int8, "shift int": shift_int, "shift float": shift_float, "fp32 dense": dense}, \
        {"wq": wq, "p": p, "top": shifts.top, "sqnr_db": shifts.sqnr_db}


def _runner(artifact, feeds_list):
    main = artifact.vm["main"]
    arguments = [artifact._arguments(feeds) for feeds in feeds_list]
    state = {"i": 0}

    def run():
        state["i"] = (state["i"] + 1) % len(arguments)
        return main(*arguments[state["i"]])

    return run


def measure_layer(k: int, n: int, rows_list: list[int], runs: int, threads: int) -> dict:
    from graphopt.backends import tvm as tvm_backend  # noqa: PLC0415
    from graphopt.ops.shift_matmul_integer import shift_matmul_integer_reference  # noqa: PLC0415

    targets = _targets()
    out = {"k": k, "n": n, "threads": threads, "load_before": os.getloadavg(), "rows": {}}
    rng = np.random.default_rng(SEED + 1)
    for rows in rows_list:
        models, info = layer_models(k, n, rows)
        out.setdefault("shift_top_exponent", info["top"])
        out.setdefault("shift_weight_sqnr_vs_int8_db", round(info["sqnr_db"], 2))
        ints = [{"x": rng.integers(-128, 128, (rows, k)).astype(np.int8)} for _ in range(INPUTS)]
        floats = [{"x": rng.standard_normal((rows, k), dtype=np.float32)} for _ in range(INPUTS)]
        plan = {"int8 vnni": ("int8", "host", ints), "int8 avx2": ("int8", "no-vnni", ints),
                "int8 avx2-only": ("int8", "avx2-only", ints), "shift int": ("shift int", "host", ints),
                "shift int avx2-only": ("shift int", "avx2-only", ints), "shift float": ("shift float", "host", floats),
                "fp32 dense": ("fp32 dense", "host", floats)}
        artifacts = {name: tvm_backend.compile(models[m], target=targets[t], threads=threads, example_inputs=f[0])
                     for name, (m, t, f) in plan.items()}
        x = ints[0]["x"]
        exact = {"int8": x.astype(np.int64) @ info["wq"].astype(np.int64),
                 "shift int": shift_matmul_integer_reference(x, info["p"])}
        for name, (m, _, _) in plan.items():
            if m in exact:
                assert np.array_equal(artifacts[name].run(ints[0])["y"], exact[m]), f"{name}: not bit-exact"
        ms = interleaved_medians({name: _runner(a, plan[name][2]) for name, a in artifacts.items()}, runs,
                                 per_round=2 if rows == 1 else 1)
        row = {"ms": {name: round(v, 3) for name, v in ms.items()},
               "vs int8 vnni": {name: round(ms["int8 vnni"] / v, 3) for name, v in ms.items()},
               "weight_mb": {"int8": round(info["wq"].nbytes / 1e6, 2), "shift": round(info["p"].nbytes / 1e6, 2),
                             "fp32": round(k * n * 4 / 1e6, 2)}}
        out["rows"][rows] = row
        print(f"rows {rows}: " + ", ".join(f"{name} {v:.3f} ms" for name, v in ms.items()), flush=True)
    out["load_after"] = os.getloadavg()
    return out


def measure_vit(runs: int, threads: int) -> dict:
    import graphopt  # noqa: PLC0415
    from graphopt.backends import ort as ort_backend  # noqa: PLC0415
    from graphopt.backends import tvm as tvm_backend  # noqa: PLC0415
    from graphopt.models import digits_vit  # noqa: PLC0415

    proto = digits_vit.build()
    x_train, _, x_test, y_test = digits_vit.dataset()
    calib = [{"pixels": x_train[i:i + 32]} for i in range(0, 256, 32)]
    targets = _targets()
    out = {"threads": threads, "load_before": os.getloadavg(), "variants": {}}
    runners = {}
    for preset in ("ivit", "ivit-shift"):
        result = graphopt.compile(proto, passes=preset, calib=calib, validate=False, bench_runs=0)
        model = result.model
        session = ort_backend.make_session(model, optimization="disable", threads=threads)
        logits = np.concatenate([ort_backend.run(session, {"pixels": x_test[i:i + 64]})["logits"]
                                 for i in range(0, len(x_test), 64)])
        kinds = [node.op_type for node in model.graph]
        out["variants"][preset] = {"top1": round(float((logits.argmax(1) == y_test).mean()), 4),
                                   "MatMulInteger": kinds.count("MatMulInteger"), "ShiftMatMulInteger": kinds.count("ShiftMatMulInteger")}
        feeds = [{"pixels": x_test[i:i + 1]} for i in range(INPUTS)]
        for target in ("host", "avx2-only"):
            artifact = tvm_backend.compile(model, target=targets[target], threads=threads, example_inputs=feeds[0])
            for f in feeds:
                expected = ort_backend.run(session, f)["logits"]
                assert np.array_equal(artifact.run(f)["logits"], expected), f"{preset} on {target}: not bit-exact with ORT"
            runners[f"{preset} {target}"] = _runner(artifact, feeds)
        print(preset, out["variants"][preset], flush=True)
    ms = interleaved_medians(runners, runs)
    out["ms"] = {name: round(v, 3) for name, v in ms.items()}
    out["load_after"] = os.getloadavg()
    print(out["ms"], flush=True)
    return out


def measure_minilm(threads: int) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import graphopt  # noqa: PLC0415
    from graphopt import integer_region  # noqa: PLC0415
    from graphopt.backends import ort as ort_backend  # noqa: PLC0415
    from graphopt.models import minilm  # noqa: PLC0415

    proto = minilm.build()
    sentences = minilm.sentences()
    batch = minilm.tokenize(sentences[:28], seq_len=128)
    calib = [{k: v[i:i + 1] for k, v in batch.items()} for i in range(28)]
    held = minilm.tokenize(sentences[28:], seq_len=128)
    feeds = [{k: v[i:i + 1] for k, v in held.items()} for i in range(len(held["input_ids"]))]

    def embed(model):
        model = model if isinstance(model, ir.Model) else ir.serde.deserialize_model(model)
        session = ort_backend.make_session(model, optimization="disable", threads=threads)
        outs = [ort_backend.run(session, f) for f in feeds]
        key = "last_hidden_state" if "last_hidden_state" in outs[0] else next(iter(outs[0]))
        return minilm.mean_pool(np.concatenate([o[key] for o in outs]), held["attention_mask"])

    base = embed(proto)
    out = {"load_before": os.getloadavg(), "variants": {}}
    for preset in ("ivit", "ivit-shift"):
        model = graphopt.compile(proto, passes=preset, calib=calib, validate=False, bench_runs=0).model
        got = embed(model)
        cos = (got * base).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(base, axis=1)
        kinds = [node.op_type for node in model.graph]
        out["variants"][preset] = {"sentences": len(cos), "mean_cosine": round(float(cos.mean()), 4),
                                   "min_cosine": round(float(cos.min()), 4), "MatMulInteger": kinds.count("MatMulInteger"),
                                   "ShiftMatMulInteger": kinds.count("ShiftMatMulInteger"),
                                   "integer_only": integer_region.verify(model).ok}
        print(preset, out["variants"][preset], flush=True)
    out["load_after"] = os.getloadavg()
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=4096)
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--rows", default="1,128")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--vit", action="store_true", help="the digits ViT end to end instead of the one layer")
    parser.add_argument("--minilm", action="store_true", help="MiniLM embedding cosine of ivit and ivit-shift instead")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.vit:
        result = measure_vit(args.runs, args.threads)
    elif args.minilm:
        result = measure_minilm(args.threads)
    else:
        result = measure_layer(args.k, args.n, [int(r) for r in args.rows.split(",")], args.runs, args.threads)
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
