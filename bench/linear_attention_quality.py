"""Attention in linear form, training-free: task metric and per-block attention-output cosine per method.

    PYTHONPATH=. python -m bench.linear_attention_quality [--models digits-vit,minilm] [--methods elu,relu,...]
                                                          [--sentences 200] [--json PATH]

Methods: ``linear-attention(feature_map=M)`` for M in elu, relu, cosformer, performer, liger (and
hedgehog once its fitting lands: it declines until then and its row says so), ``sigmoid-attention``
and ``softplus-attention``; each after ``canonicalize``, no calibration, no fine-tuning.

- digits ViT (trained on scikit-learn digits): top-1 on the 450-image test split.
- all-MiniLM-L6-v2 (pretrained, dynamo export, seq 128 padded, attention mask honored):
  mean / min cosine of the mean-pooled sentence embedding vs the softmax model over ``--sentences``
  sentences of ``models/data/sentences.txt`` (after the first 28, as ``bench.ivit``), one per run.
- both: mean (and min) over attention blocks of the block output's cosine vs the softmax model's
  (``graphopt.attention_fidelity``; cumulative: each block sees the replacements before it), on 64
  test images / the first 32 evaluation sentences.

ONNX Runtime, graph optimizations off, fp32.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

METHODS = ("elu", "relu", "cosformer", "performer", "liger", "hedgehog", "sigmoid", "softplus")
CALIB = 28


def _pipeline(method: str) -> str:
    """``elu`` -> linear-attention(feature_map=elu); ``elu;fold_scale=false`` adds options; ``sigmoid``, ``softplus``."""
    if ";" in method:
        name, *options = method.split(";")
        return f"linear-attention(feature_map={name}, {', '.join(options)})"
    if method in ("sigmoid", "softplus"):
        return f"{method}-attention"
    return f"linear-attention(feature_map={method})"


def _rewrite(canonical, method: str):
    from graphopt.pipeline import run_pipeline  # noqa: PLC0415

    model = canonical.clone()
    record = run_pipeline(model, _pipeline(method))[-1]
    return model, record


def _fidelity(canonical, model, samples) -> dict:
    from graphopt.attention_fidelity import attention_fidelity  # noqa: PLC0415

    blocks = attention_fidelity(canonical, model, samples)
    cos = [b.cosine for b in blocks]
    return {"blocks": len(blocks), "block_cosine_mean": float(np.mean(cos)) if cos else None,
            "block_cosine_min": float(np.min(cos)) if cos else None, "block_cosines": [round(c, 5) for c in cos]}


def digits_rows(methods) -> list[dict]:
    import onnx_ir as ir  # noqa: PLC0415

    from graphopt.backends import ort as ort_backend  # noqa: PLC0415
    from graphopt.models import digits_vit  # noqa: PLC0415
    from graphopt.pipeline import run_pipeline  # noqa: PLC0415

    canonical = ir.serde.deserialize_model(digits_vit.build())
    run_pipeline(canonical, "canonicalize")
    _, _, x_test, y_test = digits_vit.dataset()
    probe = [{"pixels": x_test[i:i + 16]} for i in range(0, 64, 16)]

    def top1(model) -> float:
        session = ort_backend.make_session(model.clone(), optimization="disable", threads=2)
        logits = np.concatenate([ort_backend.run(session, {"pixels": x_test[i:i + 64]})["logits"] for i in range(0, len(x_test), 64)])
        return float((logits.argmax(1) == y_test).mean())

    rows = [{"model": "digits-vit", "method": "softmax", "top1": top1(canonical), "images": len(y_test)}]
    for method in methods:
        start = time.perf_counter()
        model, record = _rewrite(canonical, method)
        row = {"model": "digits-vit", "method": method, "pipeline": _pipeline(method), "rewrites": sum(record.rewrites.values())}
        if not record.modified:
            row["declined"] = record.declines[:1]
        else:
            row.update(top1=top1(model), **_fidelity(canonical, model, probe))
        row["seconds"] = round(time.perf_counter() - start, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def minilm_held_out(count: int):
    """Pretrained MiniLM canonicalized; ``count`` held-out sentences (after the first ``CALIB``, which
    calibrate) as one-row feeds; and ``embed(model)``: their mean-pooled embeddings through ORT."""
    import onnx_ir as ir  # noqa: PLC0415

    from graphopt.backends import ort as ort_backend  # noqa: PLC0415
    from graphopt.models import minilm  # noqa: PLC0415
    from graphopt.pipeline import run_pipeline  # noqa: PLC0415

    canonical = ir.serde.deserialize_model(minilm.build())
    run_pipeline(canonical, "canonicalize")
    held = minilm.tokenize(minilm.sentences()[CALIB:CALIB + count], seq_len=128)
    rows_of = [{k: v[i:i + 1] for k, v in held.items()} for i in range(len(held["input_ids"]))]

    def embed(model) -> np.ndarray:
        session = ort_backend.make_session(model.clone(), optimization="disable", threads=2)
        outs = [ort_backend.run(session, feeds) for feeds in rows_of]
        key = "last_hidden_state" if "last_hidden_state" in outs[0] else next(iter(outs[0]))
        return minilm.mean_pool(np.concatenate([o[key] for o in outs]), held["attention_mask"])

    return canonical, rows_of, embed


def minilm_rows(methods, count: int) -> list[dict]:
    canonical, rows_of, embed = minilm_held_out(count)
    base = embed(canonical)
    rows = [{"model": "minilm", "method": "softmax", "mean_cosine": 1.0, "sentences": len(rows_of)}]
    for method in methods:
        start = time.perf_counter()
        model, record = _rewrite(canonical, method)
        row = {"model": "minilm", "method": method, "pipeline": _pipeline(method), "rewrites": sum(record.rewrites.values())}
        if not record.modified:
            row["declined"] = record.declines[:1]
        else:
            got = embed(model)
            cos = (got * base).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(base, axis=1)
            row.update(mean_cosine=float(cos.mean()), min_cosine=float(cos.min()), **_fidelity(canonical, model, rows_of[:32]))
        row["seconds"] = round(time.perf_counter() - start, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits-vit,minilm")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated; options after ';': elu;fold_scale=false")
    parser.add_argument("--sentences", type=int, default=200)
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    rows = []
    for name in args.models.split(","):
        rows += digits_rows(methods) if name == "digits-vit" else minilm_rows(methods, args.sentences)
    print(f"{'model':<11} {'method':<10} {'metric':>8} {'min':>8} {'block cos mean':>15} {'min':>8}")
    for r in rows:
        metric = r.get("top1", r.get("mean_cosine"))
        fmt = lambda x: f"{x:8.4f}" if isinstance(x, float) else f"{'-':>8}"  # noqa: E731
        print(f"{r['model']:<11} {r['method']:<10} {fmt(metric)} {fmt(r.get('min_cosine'))} "
              f"{fmt(r.get('block_cosine_mean')):>15} {fmt(r.get('block_cosine_min'))}"
              + (f"  declined: {r['declined'][0][:90]}" if r.get("declined") else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
