"""Shift-linear on tvm-llvm: one [K, N] linear layer as packed power-of-two weights vs FP32 dense.

    python -m bench.shift [--runs 30] [--k 4096] [--n 4096] [--rows 1,128] [--threads 2] [--json out.json]
    python -m bench.shift --accuracy [--models vit,minilm] [--json out.json]
    python -m bench.shift --convnets resnet:full,convnext:full,mobilenet-v2:full,wav2vec2 [--json out.json]

The layer ``y = x · W`` (W seeded N(0, 1/K), fp32) is built in ONNX, rewritten by ``shift-linear``
(5-bit codes, six per int32 word, per-column float scale; calibrated on 4 seeded inputs) and both
models are compiled by graphopt's tvm-llvm backend with the same thread count. Per row count (1: a
batch-1 GEMV, decode; 128: a prefill) the two are timed interleaved in one process
(``bench._timing``), cycling through several inputs; the shifted output is checked against the
op's numpy reference. Also: the two models' file sizes on disk (``onnx.save``), and ONNX Runtime
(FP32, all optimizations, same threads) on the dense model for scale.

``--accuracy``: post-training accuracy of the digits ViT (top-1 on its test split, calibration on
256 training images) and of the pretrained all-MiniLM-L6-v2 (mean / min cosine of the mean-pooled
embeddings vs FP32 on the held-out sentences, calibration on 28, as ``bench.ivit``) for FP32,
``shift-linear`` (ternary and zero-free; alone and after ``canonicalize``), ``shift-linear`` keeping
layers under ``min_sqnr`` dense, the ``shiftadd`` preset (with ``binary-attention``) and ``ivit``;
models run in ONNX Runtime (optimizations off).

``--convnets``: ``shift-linear`` on convolution models (``name:full``: the zoo architecture at its
published size, ResNet-50 / ConvNeXt-T / MobileNetV2-1.0 / RegNet, random seeded weights, 32x32
images; a bare name: the small zoo entry). Each is canonicalized, then ``shift-linear`` runs
(calibration: 4 seeded inputs); reported: layers shifted (ShiftConv / ShiftMatMul), the model file
on disk before and after, the shifted layers' weight bytes float32 vs packed, and the output's
cosine vs FP32 on 4 other seeded inputs (ONNX Runtime, optimizations off). ``--pipeline`` replaces
``shift-linear`` (e.g. ``shift-linear(min_sqnr=15)``).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import onnx_ir as ir

from bench._timing import interleaved_medians

SEED = 20250621
INPUTS = 4
FLOAT = onnx.TensorProto.FLOAT


def layer_model(w: np.ndarray, rows: int) -> ir.Model:
    k, n = w.shape
    graph = oh.make_graph([oh.make_node("MatMul", ["x", "w"], ["y"])], "linear",
                          [oh.make_tensor_value_info("x", FLOAT, [rows, k])], [oh.make_tensor_value_info("y", FLOAT, [rows, n])],
                          [onh.from_array(w, "w")])
    return ir.serde.deserialize_model(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]))


def shifted(model: ir.Model, samples: list[dict]) -> ir.Model:
    from graphopt import ops  # noqa: PLC0415
    from graphopt.pipeline import run_pipeline  # noqa: PLC0415

    out = model.clone()
    records = run_pipeline(out, "shift-linear", samples=samples)
    assert records[-1].rewrites == {"shift-matmul": 1}, records[-1].declines
    ops.attach_functions(out)
    return out


def file_bytes(model: ir.Model) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.onnx")
        onnx.save(ir.to_proto(model), path)
        return os.path.getsize(path)


def _runner(artifact, feeds_list):
    main = artifact.vm["main"]
    arguments = [artifact._arguments(feeds) for feeds in feeds_list]
    state = {"i": 0}

    def run():
        state["i"] = (state["i"] + 1) % len(arguments)
        return main(*arguments[state["i"]])

    return run


def _ort_runner(model: ir.Model, feeds_list, threads: int):
    import onnxruntime as ort  # noqa: PLC0415

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(ir.to_proto(model).SerializeToString(), options, providers=["CPUExecutionProvider"])
    state = {"i": 0}

    def run():
        state["i"] = (state["i"] + 1) % len(feeds_list)
        return session.run(None, feeds_list[state["i"]])

    return run


def measure(k: int, n: int, rows_list: list[int], runs: int, threads: int) -> dict:
    from graphopt.backends import tvm as tvm_backend  # noqa: PLC0415
    from graphopt.ops.shift_matmul import shift_matmul_reference  # noqa: PLC0415

    rng = np.random.default_rng(SEED)
    w = (rng.standard_normal((k, n), dtype=np.float32) / np.float32(np.sqrt(k))).astype(np.float32)
    out = {"k": k, "n": n, "threads": threads, "load": os.getloadavg(), "rows": {}}
    for rows in rows_list:
        dense = layer_model(w, rows)
        samples = [{"x": rng.standard_normal((rows, k), dtype=np.float32)} for _ in range(4)]
        shift = shifted(dense, samples)
        if "bytes" not in out:
            out["bytes"] = {"fp32": file_bytes(dense), "shift": file_bytes(shift)}
            out["bytes"]["ratio"] = round(out["bytes"]["fp32"] / out["bytes"]["shift"], 3)
            print(f"file size: fp32 {out['bytes']['fp32'] / 1e6:.2f} MB, shift {out['bytes']['shift'] / 1e6:.2f} MB "
                  f"({out['bytes']['ratio']:.2f}x smaller)", flush=True)
        feeds = [{"x": rng.standard_normal((rows, k), dtype=np.float32)} for _ in range(INPUTS)]
        artifacts = {name: tvm_backend.compile(m, target="tvm-llvm", threads=threads, example_inputs=feeds[0])
                     for name, m in (("fp32 dense", dense), ("shift", shift))}
        node = next(nd for nd in shift.graph if nd.op_type == "ShiftMatMul")
        p, s = (shift.graph.initializers[v.name].const_value.numpy() for v in node.inputs[1:3])
        got = artifacts["shift"].run(feeds[0])["y"]
        expected = shift_matmul_reference(feeds[0]["x"], p, s)
        assert np.allclose(got, expected, rtol=1e-4, atol=1e-4 * float(np.abs(expected).max())), "shift kernel: wrong output"
        runners = {name: _runner(a, feeds) for name, a in artifacts.items()}
        runners["ort fp32"] = _ort_runner(dense, feeds, threads)
        ms = interleaved_medians(runners, runs, per_round=2 if rows == 1 else 1)
        row = {"ms": {name: round(v, 3) for name, v in ms.items()},
               "speedup_vs_tvm_fp32": round(ms["fp32 dense"] / ms["shift"], 3),
               "weight_gb_per_s": {"fp32 dense": round(k * n * 4 / ms["fp32 dense"] / 1e6, 2),
                                   "shift": round(p.nbytes / ms["shift"] / 1e6, 2)}}
        out["rows"][rows] = row
        print(f"rows {rows}: tvm fp32 {ms['fp32 dense']:.3f} ms, tvm shift {ms['shift']:.3f} ms "
              f"({row['speedup_vs_tvm_fp32']:.2f}x), ort fp32 {ms['ort fp32']:.3f} ms; weight GB/s {row['weight_gb_per_s']}",
              flush=True)
    return out


ACCURACY_VARIANTS = {
    "shift-linear": "shift-linear",
    "shift-linear(layers=!conv2d)": "shift-linear(layers=!conv2d)",  # the digits ViT's patch conv kept dense
    "shift-linear(zero_free)": "shift-linear(zero_free=true)",
    "canonicalize,shift-linear": "canonicalize,shift-linear",
    "canonicalize,shift-linear(min_sqnr=20)": "canonicalize,shift-linear(min_sqnr=20)",
    "shiftadd": "shiftadd",  # the preset: canonicalize,shift-linear,binary-attention
    "ivit": "ivit",
}


def _rewritten(proto, calib) -> dict:
    import graphopt  # noqa: PLC0415

    models = {"fp32": proto}
    for name, passes in ACCURACY_VARIANTS.items():
        result = graphopt.compile(proto, passes=passes, calib=calib, validate=False, bench_runs=0)
        shifted = sum(r.rewrites.get(k, 0) for r in result.report.passes for k in ("shift-matmul", "shift-gemm", "shift-conv"))
        models[name] = (result.model, shifted)
    return models


def accuracy(models: tuple[str, ...] = ("vit", "minilm")) -> list[dict]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rows = []
    if "vit" in models:
        rows += _vit_accuracy()
    if "minilm" in models:
        rows += _minilm_accuracy()
    return rows


def _vit_accuracy() -> list[dict]:
    from graphopt.backends import ort as ort_backend  # noqa: PLC0415
    from graphopt.models import digits_vit  # noqa: PLC0415

    rows = []
    proto = digits_vit.build()
    x_train, _, x_test, y_test = digits_vit.dataset()
    calib = [{"pixels": x_train[i:i + 32]} for i in range(0, 256, 32)]
    for name, entry in _rewritten(proto, calib).items():
        model, shifted = entry if isinstance(entry, tuple) else (entry, 0)
        session = ort_backend.make_session(model if isinstance(model, ir.Model) else ir.serde.deserialize_model(model),
                                           optimization="disable", threads=2)
        logits = np.concatenate([ort_backend.run(session, {"pixels": x_test[i:i + 64]})["logits"]
                                 for i in range(0, len(x_test), 64)])
        rows.append({"model": "digits-vit", "variant": name, "shifted_layers": shifted,
                     "top1": round(float((logits.argmax(1) == y_test).mean()), 4)})
        print(rows[-1], flush=True)
    return rows


def _minilm_accuracy() -> list[dict]:
    from graphopt.backends import ort as ort_backend  # noqa: PLC0415
    from graphopt.models import minilm  # noqa: PLC0415

    rows = []
    proto = minilm.build()
    sentences = minilm.sentences()
    batch = minilm.tokenize(sentences[:28], seq_len=128)
    calib = [{k: v[i:i + 1] for k, v in batch.items()} for i in range(28)]
    held = minilm.tokenize(sentences[28:], seq_len=128)
    feeds = [{k: v[i:i + 1] for k, v in held.items()} for i in range(len(held["input_ids"]))]

    def embed(model):
        model = model if isinstance(model, ir.Model) else ir.serde.deserialize_model(model)
        session = ort_backend.make_session(model, optimization="disable", threads=2)
        outs = [ort_backend.run(session, f) for f in feeds]
        key = "last_hidden_state" if "last_hidden_state" in outs[0] else next(iter(outs[0]))
        return minilm.mean_pool(np.concatenate([o[key] for o in outs]), held["attention_mask"])

    base = None
    for name, entry in _rewritten(proto, calib).items():
        model, shifted = entry if isinstance(entry, tuple) else (entry, 0)
        got = embed(model)
        base = got if base is None else base
        cos = (got * base).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(base, axis=1)
        rows.append({"model": "minilm", "variant": name, "shifted_layers": shifted, "sentences": len(cos),
                     "mean_cosine": round(float(cos.mean()), 4), "min_cosine": round(float(cos.min()), 4)})
        print(rows[-1], flush=True)
    return rows


def _conv_model(spec: str):
    """(model proto, inputs(seed)) of ``name`` (small zoo entry) or ``name:full`` (the published size)."""
    from graphopt.models import zoo  # noqa: PLC0415
    from graphopt.models.zoo import architectures  # noqa: PLC0415

    name, _, size = spec.partition(":")
    if size != "full":
        entry = zoo.entries()[name]
        return entry.build(), entry.example_inputs
    arch = architectures.ARCHITECTURES[name]
    config = arch.config("full")
    return zoo._export_entry(arch, "dynamo", 18, "plain", size="full"), (
        lambda seed: architectures.make_inputs(arch, config, seed))


def convnets(specs: list[str], pipeline: str = "shift-linear") -> list[dict]:
    import graphopt  # noqa: PLC0415
    from graphopt.backends import ort as ort_backend  # noqa: PLC0415
    from graphopt.shift_report import shift_section  # noqa: PLC0415

    rows = []
    for spec in specs:
        proto, inputs = _conv_model(spec)
        calib, held = [inputs(seed) for seed in range(4)], [inputs(seed) for seed in range(100, 104)]
        models = {}
        for name, passes in (("fp32", "canonicalize"), ("shift", f"canonicalize,{pipeline}")):
            result = graphopt.compile(proto, passes=passes, calib=calib, validate=False, bench_runs=0)
            models[name] = result.model
        outputs = {}
        for name, model in models.items():
            session = ort_backend.make_session(model, optimization="disable", threads=2)
            outputs[name] = [np.concatenate([np.ravel(v) for v in ort_backend.run(session, f).values()]) for f in held]
        cosines = [float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b))) for a, b in zip(outputs["shift"], outputs["fp32"])]
        section = shift_section(models["shift"]) or {"layers": [], "float32_bytes": 0, "packed_bytes": 0, "ratio": 1.0}
        counts = {}
        for layer in section["layers"]:
            counts[layer["op"]] = counts.get(layer["op"], 0) + 1
        row = {"model": spec, "pipeline": pipeline, "shifted": counts, "file_bytes": {k: file_bytes(m) for k, m in models.items()},
               "layer_bytes": {"float32": section["float32_bytes"], "packed": section["packed_bytes"],
                               "ratio": round(section["ratio"], 3)},
               "cosine_mean": round(float(np.mean(cosines)), 5), "cosine_min": round(float(np.min(cosines)), 5),
               "load": os.getloadavg()}
        row["file_bytes"]["ratio"] = round(row["file_bytes"]["fp32"] / row["file_bytes"]["shift"], 3)
        rows.append(row)
        print(row, flush=True)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--k", type=int, default=4096)
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--rows", default="1,128")
    parser.add_argument("--json", default=None, help="write the measurements here")
    parser.add_argument("--accuracy", action="store_true", help="digits ViT top-1 and MiniLM cosine instead of latency")
    parser.add_argument("--models", default="vit,minilm", help="--accuracy: which models (vit, minilm)")
    parser.add_argument("--convnets", default=None, help="comma-separated zoo conv models (name or name:full): file size, cosine")
    parser.add_argument("--pipeline", default="shift-linear", help="--convnets: the shift pipeline after canonicalize")
    args = parser.parse_args(argv)
    if args.convnets:
        rows = convnets(args.convnets.split(","), args.pipeline)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
        return
    if args.accuracy:
        rows = accuracy(tuple(args.models.split(",")))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
        return
    result = measure(args.k, args.n, [int(r) for r in args.rows.split(",")], args.runs, args.threads)
    print(f"load average at start: {result['load']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
