"""Binary-code attention (issue 17 item 2): digits-ViT top-1 and per-block attention fidelity, and latency.

Accuracy: the trained digits ViT (test split, 450 images) in ONNX Runtime, FP32 vs ``canonicalize,
binary-attention(nbits=N)`` vs ``shiftadd`` with that nbits, codes fitted on ``--calib`` training
images (seeded choice); per replaced attention block the output cosine vs the canonical FP32 model
(``graphopt.attention_fidelity``, on 64 held-out test images; cumulative: each block sees every
replacement upstream, and under ``shiftadd`` the shifted linears too).

Latency: one attention layer (batch 1, 12 heads x 64, fp32, N = 197 and 1024 tokens), ONNX Runtime
(all graph optimizations, ``--threads``): the canonical ``DotProductAttention`` (its ONNX body:
MatMul-Softmax-MatMul) vs the binary-attention rewrite (codes as MatMul/Add/Greater/Cast, then
LinearizedAttention's ONNX body), medians of interleaved runs. The ONNX body computes the codes'
masked sums as float MatMuls with 0/1 operands: this measures the linear-time form, not a
bit-packed addition kernel. ``--kernel`` (needs TVM) times the masked additions themselves: the
attention as four ``MaskedAddMatMul`` (Ckᵀ·V, Ckᵀ·1, Cq·S, Cq·z, codes given bit-packed: hashing and
packing not included) then one Div, on tvm-llvm (the TE kernel, TVM's default lowering) and in ONNX
Runtime (its body), against the softmax DotProductAttention on tvm-llvm (graphopt's kernel) and ORT.

    PYTHONPATH=. .venv/bin/python -m bench.binary_attention [--nbits 16 32] [--calib 256] [--tokens 197 1024] [--json]
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


def accuracy_rows(nbits_list, calib: int, steps: int) -> list[dict]:
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
    shifted = ir.serde.deserialize_model(proto)
    run_pipeline(shifted, "canonicalize,shift-linear", samples=samples)
    rows.append({"pipeline": "canonicalize,shift-linear", "top1": top1(shifted)})
    for nbits in nbits_list:
        for pipeline in (f"canonicalize,binary-attention(nbits={nbits}, steps={steps})",
                         f"canonicalize,shift-linear,binary-attention(nbits={nbits}, steps={steps})"):
            model = ir.serde.deserialize_model(proto)
            records = run_pipeline(model, pipeline, samples=samples)
            blocks = attention_fidelity(canonical, model, probe)
            rows.append({"pipeline": pipeline, "top1": top1(model),
                         "block_cosine": [round(b.cosine, 4) for b in blocks], "notes": records[-1].notes})
    return rows


def _layer(tokens: int, heads: int = 12, dim: int = 64) -> onnx.ModelProto:
    shape = f"[1,{heads},{tokens},{dim}]"
    text = (f'<ir_version: 10, opset_import: ["": 18]>\nattn (float{shape} Q, float{shape} K, float{shape} V) '
            f"=> (float{shape} Y) {{\n    kt = Transpose <perm = [0, 1, 3, 2]> (K)\n    s = MatMul (Q, kt)\n"
            f"    c = Constant <value = float {{{dim ** -0.5}}}> ()\n    sc = Mul (s, c)\n"
            "    p = Softmax <axis = -1> (sc)\n    Y = MatMul (p, V)\n}")
    return onnx.parser.parse_model(text)


def latency_rows(tokens_list, nbits: int, threads: int, runs: int) -> list[dict]:
    import onnxruntime as ort  # noqa: PLC0415

    rows = []
    for tokens in tokens_list:
        rng = np.random.default_rng(0)
        feeds = {n: rng.standard_normal((1, 12, tokens, 64)).astype(np.float32) for n in "QKV"}
        sessions = {}
        for label, pipeline in (("softmax", "attention"), ("binary", f"attention,binary-attention(nbits={nbits}, steps=0)")):
            model = ir.serde.deserialize_model(_layer(tokens))
            run_pipeline(model, pipeline, samples=[feeds])
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.log_severity_level = 3
            sessions[label] = ort.InferenceSession(testing._proto(model).SerializeToString(), options,
                                                   providers=["CPUExecutionProvider"])
        medians = interleaved_medians({k: (lambda s=s: s.run(None, feeds)) for k, s in sessions.items()}, runs)
        rows.append({"tokens": tokens, "threads": threads, "softmax_ms": round(medians["softmax"], 3),
                     "binary_ms": round(medians["binary"], 3),
                     "speedup": round(medians["softmax"] / medians["binary"], 2)})
    return rows


def _masked_add_model(tokens: int, heads: int = 12, nbits: int = 16, dv: int = 64) -> ir.Model:
    from graphopt import ops  # noqa: PLC0415

    words_q, words_k = -(-nbits // 16), -(-tokens // 16)
    text = f"""<ir_version: 10, opset_import: ["": 18, "pkg.graphopt": 1]>
g (int32[{heads},{tokens},{words_q}] cq, int32[{heads},{nbits},{words_k}] ckt, float[{heads},{tokens},{dv}] v,
   float[{heads},{tokens},1] ones) => (float[{heads},{tokens},{dv}] y) {{
  s = pkg.graphopt.MaskedAddMatMul <k = {tokens}> (ckt, v)
  z = pkg.graphopt.MaskedAddMatMul <k = {tokens}> (ckt, ones)
  num = pkg.graphopt.MaskedAddMatMul <k = {nbits}> (cq, s)
  den = pkg.graphopt.MaskedAddMatMul <k = {nbits}> (cq, z)
  e = Constant <value = float {{1e-6}}> ()
  d = Add (den, e)
  y = Div (num, d)
}}"""
    model = ir.serde.deserialize_model(onnx.parser.parse_model(text))
    ops.attach_functions(model)
    return model


def kernel_rows(tokens_list, threads: int, runs: int) -> list[dict]:
    import onnxruntime as ort  # noqa: PLC0415

    from graphopt.backends import tvm as tvm_backend  # noqa: PLC0415
    from graphopt.ops.masked_add_matmul import pack_bits  # noqa: PLC0415

    rows = []
    for tokens in tokens_list:
        rng = np.random.default_rng(0)
        keys = rng.random((12, tokens, 16)) < 0.5
        feeds = {"cq": pack_bits(rng.random((12, tokens, 16)) < 0.5), "ckt": pack_bits(np.swapaxes(keys, -1, -2)),
                 "v": rng.standard_normal((12, tokens, 64)).astype(np.float32),
                 "ones": np.ones((12, tokens, 1), np.float32)}
        qkv = {n: rng.standard_normal((1, 12, tokens, 64)).astype(np.float32) for n in "QKV"}
        masked = _masked_add_model(tokens)
        softmax = ir.serde.deserialize_model(_layer(tokens))
        run_pipeline(softmax, "attention")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        runners = {}
        for label, model, inputs in (("softmax", softmax, qkv), ("masked_add", masked, feeds)):
            artifact = tvm_backend.compile(model, target="tvm-llvm", example_inputs=inputs)
            session = ort.InferenceSession(testing._proto(model).SerializeToString(), options,
                                           providers=["CPUExecutionProvider"])
            runners[f"{label}_tvm"] = lambda a=artifact, i=inputs: a.run(i)
            runners[f"{label}_ort"] = lambda s=session, i=inputs: s.run(None, i)
        medians = interleaved_medians(runners, runs)
        rows.append({"tokens": tokens, **{f"{k}_ms": round(v, 3) for k, v in medians.items()}})
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
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--kernel", action="store_true", help="also time MaskedAddMatMul (needs TVM)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = {}
    if not args.skip_accuracy:
        result["accuracy"] = accuracy_rows(args.nbits, args.calib, args.steps)
    if not args.skip_latency:
        result["latency"] = latency_rows(args.tokens, args.nbits[0], args.threads, args.runs)
    if args.kernel:
        result["kernel"] = kernel_rows(args.tokens, args.threads, args.runs)
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    for row in result.get("accuracy", []):
        print(f"{row['pipeline']:<75} top-1 {row['top1']:.4f}  block cosine {row.get('block_cosine', '')}")
    for row in result.get("latency", []):
        print(f"N={row['tokens']:<5} softmax {row['softmax_ms']:.2f} ms  binary {row['binary_ms']:.2f} ms  "
              f"({row['speedup']}x, {row['threads']} threads)")
    for row in result.get("kernel", []):
        print(f"N={row['tokens']:<5} " + "  ".join(f"{k[:-3]} {v:.2f} ms" for k, v in row.items() if k.endswith("_ms")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
