"""Binary-code attention (issue 17 item 2): accuracy of the codes, and latency of the masked additions.

Accuracy: the trained digits ViT (test split, 450 images) in ONNX Runtime, FP32 vs ``canonicalize,
binary-attention(nbits=N)`` (MaskedAddMatMul over codes packed at run time) vs the same pass with
``form=linearized`` (float 0/1 codes + LinearizedAttention: the same codes, the same maths, so the
two must agree) vs ``shiftadd`` with that nbits; codes fitted on ``--calib`` training images
(seeded choice); per replaced attention block the output cosine vs the canonical FP32 model
(``graphopt.attention_fidelity``, on 64 held-out test images; cumulative). ``--minilm N``: the
pretrained MiniLM (static shapes, batch 1, 128 tokens; codes fitted on the first 28 sentences,
``--minilm-steps``), mean-pooled embedding cosine to FP32 on N held-out sentences, both forms.

Latency: one attention layer (batch 1, 12 heads x 64, fp32, N = 197 and 1024 tokens), medians of
interleaved runs in one process (``bench._timing``), ``--threads``: the canonical
``DotProductAttention`` (softmax; ORT runs its ONNX body MatMul-Softmax-MatMul with all graph
optimizations; tvm-llvm: graphopt's kernel, the VM's ``main`` on inputs converted once, as
``bench.attention`` and ``TvmArtifact.time``) vs the binary-attention rewrite as the pass emits it
(hashing, run-time packing and two MaskedAddMatMul: ORT runs the op's ONNX body, tvm-llvm the
hand-scheduled kernel) vs ``form=linearized`` (LinearizedAttention: ORT its body, tvm-llvm its
hand-scheduled kernel). Codes from ``steps=0`` (the initialization: latency does not depend on the fit).

    PYTHONPATH=. .venv/bin/python -m bench.binary_attention [--nbits 16 32] [--calib 256] [--tokens 197 1024]
        [--minilm 100 --minilm-steps 100] [--no-shiftadd] [--skip-accuracy] [--skip-latency] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import onnx
import onnx_ir as ir

from bench._timing import interleaved_medians
from graphopt import testing
from graphopt.attention_fidelity import attention_fidelity
from graphopt.models import digits_vit
from graphopt.pipeline import run_pipeline


UNBOUNDED_S = 86400  # the fit's wall-time bound, out of the way: a loaded host would stop fits at different steps


def accuracy_rows(nbits_list, calib: int, steps: int, shiftadd: bool = True) -> list[dict]:
    proto = digits_vit.build()
    x_tr, _, x_te, _ = digits_vit.dataset()
    pick = np.sort(np.random.default_rng(0).choice(len(x_tr), size=calib, replace=False))
    samples = [{"pixels": x_tr[pick[i : i + 32]]} for i in range(0, calib, 32)]
    probe = [{"pixels": x_te[i : i + 32]} for i in range(0, 64, 32)]
    canonical = ir.serde.deserialize_model(proto)
    run_pipeline(canonical, "canonicalize", samples=samples)

    def top1(model):
        return digits_vit.accuracy(lambda feeds: testing.run_ort(model, feeds)[0])

    rows = [{"pipeline": "fp32", "top1": top1(ir.serde.deserialize_model(proto))}]
    if shiftadd:
        shifted = ir.serde.deserialize_model(proto)
        run_pipeline(shifted, "canonicalize,shift-linear", samples=samples)
        rows.append({"pipeline": "canonicalize,shift-linear", "top1": top1(shifted)})
    for nbits in nbits_list:
        fit = f"nbits={nbits}, steps={steps}, seconds={UNBOUNDED_S}"  # steps only: both forms get the very codes
        pipelines = [f"canonicalize,binary-attention({fit})", f"canonicalize,binary-attention({fit}, form=linearized)"]
        if shiftadd:
            pipelines.append(f"canonicalize,shift-linear,binary-attention({fit})")
        for pipeline in pipelines:
            model = ir.serde.deserialize_model(proto)
            records = run_pipeline(model, pipeline, samples=samples)
            blocks = attention_fidelity(canonical, model, probe)
            rows.append({"pipeline": pipeline, "top1": top1(model), "masked_add": _count(model, "MaskedAddMatMul"),
                         "block_cosine": [round(b.cosine, 4) for b in blocks], "notes": records[-1].notes})
    return rows


def _count(model, op_type: str) -> int:
    return sum(n.op_type == op_type for n in model.graph)


def minilm_rows(count: int, nbits: int, steps: int) -> list[dict]:
    """MiniLM (static shapes: the key length is an attribute of MaskedAddMatMul) embedding cosine to FP32."""
    from graphopt.backends import ort as ort_backend  # noqa: PLC0415
    from graphopt.models import minilm  # noqa: PLC0415

    proto = minilm.build(seq_len=128, batch=1, dynamic=False)
    texts = minilm.sentences()
    calib = minilm.tokenize(texts[:28], seq_len=128)
    held = minilm.tokenize(texts[28:28 + count], seq_len=128)
    samples = [{k: v[i:i + 1] for k, v in calib.items()} for i in range(len(calib["input_ids"]))]
    rows_of = [{k: v[i:i + 1] for k, v in held.items()} for i in range(len(held["input_ids"]))]

    def embed(model) -> np.ndarray:
        session = ort_backend.make_session(model.clone(), optimization="disable", threads=2)
        outs = [ort_backend.run(session, feeds) for feeds in rows_of]
        key = "last_hidden_state" if "last_hidden_state" in outs[0] else next(iter(outs[0]))
        return minilm.mean_pool(np.concatenate([o[key] for o in outs]), held["attention_mask"])

    canonical = ir.serde.deserialize_model(proto)
    run_pipeline(canonical, "canonicalize")
    base = embed(canonical)
    rows = []
    for form in ("masked-add", "linearized"):
        model = canonical.clone()
        pipeline = f"binary-attention(nbits={nbits}, steps={steps}, seconds={UNBOUNDED_S}, form={form})"
        record = run_pipeline(model, pipeline, samples=samples)[-1]
        got = embed(model)
        cos = (got * base).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(base, axis=1)
        rows.append({"model": "minilm", "form": form, "nbits": nbits, "steps": steps, "sentences": len(rows_of),
                     "rewrites": sum(record.rewrites.values()), "masked_add": _count(model, "MaskedAddMatMul"),
                     "mean_cosine": round(float(cos.mean()), 5), "min_cosine": round(float(cos.min()), 5),
                     "embeddings": got})
    rows[1]["max_abs_diff_to_masked_add"] = float(np.abs(rows[1]["embeddings"] - rows[0]["embeddings"]).max())
    for row in rows:
        del row["embeddings"]
    return rows


def _layer(tokens: int, heads: int = 12, dim: int = 64) -> onnx.ModelProto:
    shape = f"[1,{heads},{tokens},{dim}]"
    text = (f'<ir_version: 10, opset_import: ["": 18]>\nattn (float{shape} Q, float{shape} K, float{shape} V) '
            f"=> (float{shape} Y) {{\n    kt = Transpose <perm = [0, 1, 3, 2]> (K)\n    s = MatMul (Q, kt)\n"
            f"    c = Constant <value = float {{{dim ** -0.5}}}> ()\n    sc = Mul (s, c)\n"
            "    p = Softmax <axis = -1> (sc)\n    Y = MatMul (p, V)\n}")
    return onnx.parser.parse_model(text)


LATENCY_PIPELINES = {  # label -> pipeline after the attention fusion
    "softmax": "attention",
    "masked_add": "attention,binary-attention(nbits={nbits}, steps=0)",
    "linearized": "attention,binary-attention(nbits={nbits}, steps=0, form=linearized)",
}


def latency_rows(tokens_list, nbits: int, threads: int, runs: int, backends=("ort", "tvm")) -> list[dict]:
    import onnxruntime as ort  # noqa: PLC0415

    rows = []
    for tokens in tokens_list:
        rng = np.random.default_rng(0)
        feeds = {n: rng.standard_normal((1, 12, tokens, 64)).astype(np.float32) for n in "QKV"}
        runners, outputs = {}, {}
        for label, pipeline in LATENCY_PIPELINES.items():
            model = ir.serde.deserialize_model(_layer(tokens))
            run_pipeline(model, pipeline.format(nbits=nbits), samples=[feeds])
            if "ort" in backends:
                options = ort.SessionOptions()
                options.intra_op_num_threads = threads
                options.log_severity_level = 3
                session = ort.InferenceSession(testing._proto(model).SerializeToString(), options,
                                               providers=["CPUExecutionProvider"])
                runners[f"{label}_ort"] = lambda s=session: s.run(None, feeds)
                outputs[f"{label}_ort"] = session.run(None, feeds)[0]
            if "tvm" in backends:
                from graphopt.backends import tvm as tvm_backend  # noqa: PLC0415

                artifact = tvm_backend.compile(model, target="tvm-llvm", example_inputs=feeds)
                main, arguments = artifact.vm["main"], artifact._arguments(feeds)  # as bench.attention: the VM call
                runners[f"{label}_tvm"] = lambda m=main, a=arguments: m(*a)
                outputs[f"{label}_tvm"] = artifact.run(feeds)["Y"]
        medians = interleaved_medians(runners, runs)
        row = {"tokens": tokens, "threads": threads, **{f"{k}_ms": round(v, 3) for k, v in medians.items()}}
        for backend in backends:  # the two binary forms compute the same thing (same codes)
            a, b = outputs.get(f"masked_add_{backend}"), outputs.get(f"linearized_{backend}")
            if a is not None and b is not None:
                row[f"forms_max_abs_diff_{backend}"] = float(np.abs(a - b).max())
            soft = medians.get(f"softmax_{backend}")
            if soft:
                row[f"speedup_{backend}"] = round(soft / medians[f"masked_add_{backend}"], 2)
        if "softmax_ort" in medians and "masked_add_tvm" in medians:
            row["speedup_tvm_vs_ort_softmax"] = round(medians["softmax_ort"] / medians["masked_add_tvm"], 2)
        rows.append(row)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nbits", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--calib", type=int, default=256)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--tokens", type=int, nargs="+", default=[197, 1024])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--no-shiftadd", action="store_true", help="accuracy: only FP32 and the two binary forms")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--backends", nargs="+", default=["ort", "tvm"], choices=["ort", "tvm"])
    parser.add_argument("--minilm", type=int, default=0, help="held-out MiniLM sentences (0: skip MiniLM)")
    parser.add_argument("--minilm-steps", type=int, default=100)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = {}
    if not args.skip_accuracy:
        result["accuracy"] = accuracy_rows(args.nbits, args.calib, args.steps, not args.no_shiftadd)
    if args.minilm:
        result["minilm"] = minilm_rows(args.minilm, args.nbits[0], args.minilm_steps)
    if not args.skip_latency:
        result["latency"] = latency_rows(args.tokens, args.nbits[0], args.threads, args.runs, tuple(args.backends))
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    for row in result.get("accuracy", []):
        print(f"{row['pipeline']:<90} top-1 {row['top1']:.4f}  block cosine {row.get('block_cosine', '')}  "
              f"MaskedAddMatMul {row.get('masked_add', '-')}")
    for row in result.get("minilm", []):
        print(json.dumps(row))
    for row in result.get("latency", []):
        print(f"N={row['tokens']:<5} " + "  ".join(f"{k[:-3]} {v:.2f} ms" for k, v in row.items() if k.endswith("_ms"))
              + "  " + "  ".join(f"{k} {v}" for k, v in row.items() if not k.endswith("_ms") and k != "tokens"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
