"""Hedgehog vs elu+1 linear attention, calibrated: task metric and per-block attention-output cosine.

    PYTHONPATH=. python -m bench.hedgehog_quality [--models digits-vit,minilm] [--methods elu,hedgehog]
                                                  [--sentences 200] [--steps 200] [--seconds 120] [--json PATH]
                                                  [--windows 0] [--vit-windows W,..] [--minilm-windows W,..]

``linear-attention(feature_map=M)`` after ``canonicalize``, run with calibration samples (hedgehog
fits one map per attention on them: ``passes/_hedgehog.py``; the other maps ignore them), then
measured as ``bench.linear_attention_quality`` measures the training-free forms:

- digits ViT: calibration 64 training images (4 batches of 16); top-1 on the 450-image test split;
  per-block attention-output cosine vs the softmax model on 64 test images.
- all-MiniLM-L6-v2 (seq 128): calibration the first 28 sentences of ``models/data/sentences.txt``
  (the ones the evaluation leaves out); mean / min cosine of the mean-pooled embedding vs softmax
  over the next ``--sentences``; per-block cosine on the first 32 of them.

ONNX Runtime, graph optimizations off, fp32. Fitting is seeded and deterministic for a given step
count; ``--seconds`` (the whole model's budget) can stop it earlier on a slow machine, and each
row says how many steps each attention got.

``--windows`` (per model: ``--vit-windows``, ``--minilm-windows``; default 0) runs each method at each
window: W > 0 is LoLCATs' hybrid (``linear-attention(window=W)``: softmax over |i - j| < W, the map
outside, per-head γ fitted on the same samples, jointly with hedgehog's maps); rows are labelled
``method wW`` and list the fitted γ range.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from bench.linear_attention_quality import CALIB as CALIB_SENTENCES
from bench.linear_attention_quality import minilm_held_out


def _pipeline(method: str, steps: int, seconds: float, window: int = 0) -> str:
    extra = f", window={window}" if window else ""
    if method == "hedgehog":
        return f"linear-attention(feature_map=hedgehog, hedgehog_steps={steps}, hedgehog_seconds={seconds}{extra})"
    return f"linear-attention(feature_map={method}{extra})"


def _variants(methods, windows):
    """(label, method, window) for each method at each window."""
    return [(m if not w else f"{m} w{w}", m, w) for m in methods for w in windows]


def _rewrite(canonical, pipeline: str, samples):
    from graphopt.ops.linear_attention import CHOICES_KEY  # noqa: PLC0415
    from graphopt.pipeline import run_pipeline  # noqa: PLC0415

    model = canonical.clone()
    record = run_pipeline(model, pipeline, samples=samples)[-1]
    choices = [json.loads(n.metadata_props[CHOICES_KEY]) for n in model.graph
               if n.op_type in ("LinearizedAttention", "WindowedLinearAttention") and CHOICES_KEY in n.metadata_props]
    steps = [c.get("hedgehog_steps") for c in choices]
    row = {"rewrites": sum(record.rewrites.values()), "fit_steps": [s for s in steps if s is not None]}
    gammas = [g for c in choices for g in c.get("gamma", [])]
    if gammas:
        row["gamma_range"] = [round(min(gammas), 4), round(max(gammas), 4)]
    return model, row


def _blocks(canonical, model, probe) -> dict:
    from graphopt.attention_fidelity import attention_fidelity  # noqa: PLC0415

    cos = [b.cosine for b in attention_fidelity(canonical, model, probe)]
    return {"block_cosine_mean": round(float(np.mean(cos)), 4), "block_cosine_min": round(float(np.min(cos)), 4)}


def digits_rows(methods, steps, seconds, windows=(0,)) -> list[dict]:
    import onnx_ir as ir  # noqa: PLC0415

    from graphopt.backends import ort as ort_backend  # noqa: PLC0415
    from graphopt.models import digits_vit  # noqa: PLC0415
    from graphopt.pipeline import run_pipeline  # noqa: PLC0415

    canonical = ir.serde.deserialize_model(digits_vit.build())
    run_pipeline(canonical, "canonicalize")
    x_train, _, x_test, y_test = digits_vit.dataset()
    calib = [{"pixels": x_train[i:i + 16]} for i in range(0, 64, 16)]
    probe = [{"pixels": x_test[i:i + 16]} for i in range(0, 64, 16)]

    def top1(model) -> float:
        session = ort_backend.make_session(model.clone(), optimization="disable", threads=2)
        logits = np.concatenate([ort_backend.run(session, {"pixels": x_test[i:i + 64]})["logits"] for i in range(0, len(x_test), 64)])
        return round(float((logits.argmax(1) == y_test).mean()), 4)

    rows = [{"model": "digits-vit", "method": "softmax", "top1": top1(canonical)}]
    for label, method, window in _variants(methods, windows):
        start = time.perf_counter()
        model, row = _rewrite(canonical, _pipeline(method, steps, seconds, window), calib)
        row.update(model="digits-vit", method=label, top1=top1(model), **_blocks(canonical, model, probe),
                   seconds=round(time.perf_counter() - start, 1))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def minilm_rows(methods, count, steps, seconds, windows=(0,)) -> list[dict]:
    from graphopt.models import minilm  # noqa: PLC0415

    canonical, rows_of, embed = minilm_held_out(count)
    cal = minilm.tokenize(minilm.sentences()[:CALIB_SENTENCES], seq_len=128)
    calib = [{k: v[i:i + 1] for k, v in cal.items()} for i in range(CALIB_SENTENCES)]
    base = embed(canonical)
    rows = [{"model": "minilm", "method": "softmax", "mean_cosine": 1.0, "sentences": len(rows_of)}]
    for label, method, window in _variants(methods, windows):
        start = time.perf_counter()
        model, row = _rewrite(canonical, _pipeline(method, steps, seconds, window), calib)
        got = embed(model)
        cos = (got * base).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(base, axis=1)
        row.update(model="minilm", method=label, mean_cosine=round(float(cos.mean()), 4), min_cosine=round(float(cos.min()), 4),
                   **_blocks(canonical, model, rows_of[:32]), seconds=round(time.perf_counter() - start, 1))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits-vit,minilm")
    parser.add_argument("--methods", default="elu,hedgehog")
    parser.add_argument("--sentences", type=int, default=200)
    parser.add_argument("--steps", type=int, default=200, help="hedgehog: Adam steps per attention")
    parser.add_argument("--seconds", type=float, default=120.0, help="hedgehog: fitting budget of the whole model")
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--windows", default="0", help="LoLCATs hybrid windows to run each method at (0: none)")
    parser.add_argument("--vit-windows", default=None, help="digits ViT's windows (default --windows)")
    parser.add_argument("--minilm-windows", default=None, help="MiniLM's windows (default --windows)")
    args = parser.parse_args(argv)

    def windows(own):
        return [int(w) for w in (own or args.windows).split(",") if w]

    methods = [m for m in args.methods.split(",") if m]
    rows = []
    for name in args.models.split(","):
        rows += (digits_rows(methods, args.steps, args.seconds, windows(args.vit_windows)) if name == "digits-vit"
                 else minilm_rows(methods, args.sentences, args.steps, args.seconds, windows(args.minilm_windows)))
    print(f"{'model':<11} {'method':<13} {'metric':>7} {'block cos mean':>15} {'min':>7}  fit steps / γ range")
    for r in rows:
        metric = r.get("top1", r.get("mean_cosine"))
        print(f"{r['model']:<11} {r['method']:<13} {metric:7.4f} {r.get('block_cosine_mean', 1.0):15.4f} "
              f"{r.get('block_cosine_min', 1.0):7.4f}  {r.get('fit_steps') or '-'} {r.get('gamma_range', '')}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
