"""Fine-tuning gains (graphopt.finetune), side by side with FP32 and post-training.

    python -m bench.finetune relufy-llama [--steps 300] [--lr 1e-3] [--lr-scale relative] [--batch 16] [--rows 512] [--seq 64] [--loss kl]
    python -m bench.finetune minilm --pipeline ivit --loss distill [--steps ...]
    python -m bench.finetune vit --pipeline ivit | canonicalize,relufy | shift-linear | ... [--steps ...] [--lr ...] [--rows 512]

``relufy-llama``: stdlib-llama (graphopt.models.stdlib_llama) rewritten ``canonicalize,relufy``
(calibrated on 16 training windows), distilled from the FP32 model on ``--rows`` training windows
of ``--seq`` tokens; held-out perplexity per byte on 64 windows of 256 bytes of files it never saw
(ORT, optimizations off), as bench.sparsity measures it. ``vit``: the digits ViT rewritten with
``--pipeline`` (calibrated on the first 256 training images), distilled on the first ``--rows``
training images; top-1 on the 450 test images. ``minilm``: all-MiniLM-L6-v2 rewritten with
``--pipeline`` calibrated on its first 28 sentences (as bench.ivit), distilled on the next 100,
measured on the last 100: cosine of the mean-pooled sentence embeddings to FP32. Every number is printed with the settings that made it.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

SETUPS = ("relufy-llama", "vit", "minilm")
CALIB_SENTENCES = 28  # bench.ivit's calibration sentences; the next TRAIN_SENTENCES train, the rest measure
TRAIN_SENTENCES = 100


def _llama(args) -> dict:
    import graphopt  # noqa: PLC0415
    from graphopt.backends import ort  # noqa: PLC0415
    from graphopt.models import stdlib_llama  # noqa: PLC0415

    def ppl(model) -> float:
        return stdlib_llama.perplexity(ort.make_session(model, optimization="disable", threads=2), count=args.windows)

    proto = stdlib_llama.build()
    post = graphopt.compile(proto, "canonicalize,relufy", calib=stdlib_llama.calibration_samples(16), validate=False).model
    data = {"input_ids": stdlib_llama.windows("train", args.rows, args.seq, seed=1)}
    tuned = graphopt.finetune(post, proto, data, steps=args.steps, lr=args.lr, lr_scale=args.lr_scale, batch_size=args.batch, loss=args.loss, seed=args.seed,
                              progress=_bar())
    return {"metric": "held-out perplexity per byte", "fp32": ppl(graphopt.load(proto)), "post_training": ppl(post),
            "fine_tuned": ppl(tuned.model), **_run(tuned)}


def _vit(args, pipeline: str) -> dict:
    import graphopt  # noqa: PLC0415
    from graphopt.backends import ort  # noqa: PLC0415
    from graphopt.models import digits_vit  # noqa: PLC0415

    def top1(model) -> float:
        session = ort.make_session(model, optimization="disable", threads=2)
        return digits_vit.accuracy(lambda feeds: session.run(None, feeds)[0])

    proto = digits_vit.build()
    x_train = digits_vit.dataset()[0]
    post = graphopt.compile(proto, pipeline, calib=[{"pixels": x_train[i:i + 1]} for i in range(256)], validate=False).model
    tuned = graphopt.finetune(post, proto, {"pixels": x_train[:args.rows]}, steps=args.steps, lr=args.lr, lr_scale=args.lr_scale, batch_size=args.batch,
                              loss=args.loss, seed=args.seed, progress=_bar())
    return {"metric": "top-1 on the 450 test images", "fp32": top1(graphopt.load(proto)), "post_training": top1(post),
            "fine_tuned": top1(tuned.model), **_run(tuned)}


def _minilm(args, pipeline: str) -> dict:
    import graphopt  # noqa: PLC0415
    from graphopt.backends import ort  # noqa: PLC0415
    from graphopt.models import minilm  # noqa: PLC0415

    proto = minilm.build()
    sentences = minilm.sentences()
    calib = minilm.tokenize(sentences[:CALIB_SENTENCES])
    train = minilm.tokenize(sentences[CALIB_SENTENCES:CALIB_SENTENCES + TRAIN_SENTENCES], seq_len=args.seq)  # --seq tokens: memory
    held = minilm.tokenize(sentences[CALIB_SENTENCES + TRAIN_SENTENCES:])

    def embed(model) -> np.ndarray:
        session = ort.make_session(model, optimization="disable", threads=2)
        rows = [ort.run(session, {k: v[i:i + 1] for k, v in held.items()})["last_hidden_state"] for i in range(len(held["input_ids"]))]
        return minilm.mean_pool(np.concatenate(rows), held["attention_mask"])

    def cosines(model) -> list[float]:
        got = embed(model)
        cos = (got * base).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(base, axis=1)
        return [float(cos.mean()), float(cos.min())]

    post = graphopt.compile(proto, pipeline, calib=[{k: v[i:i + 1] for k, v in calib.items()} for i in range(CALIB_SENTENCES)],
                            validate=False).model
    tuned = graphopt.finetune(post, proto, train, steps=args.steps, lr=args.lr, lr_scale=args.lr_scale, batch_size=args.batch,
                              loss=args.loss, seed=args.seed, progress=_bar())
    base = embed(graphopt.load(proto))
    return {"metric": f"sentence-embedding cosine to FP32 [mean, min] on {len(held['input_ids'])} held-out sentences",
            "post_training": cosines(post), "fine_tuned": cosines(tuned.model), **_run(tuned)}


def _run(tuned) -> dict:
    section = tuned.report.data["finetune"]
    (output, before), = list(section["metrics_before"].items())[:1]
    after = section["metrics_after"][output]
    return {"held_out_vs_fp32": {"rows": section["examples"]["held_out"], "cosine": [before["cosine"], after["cosine"]],
                                 "top1_agreement": [before.get("top1"), after.get("top1")]},"train_mode": section["train_mode"], "trainable": len(section["trainable"]), "seconds": round(section["seconds"], 1),
            "loss_first": section["loss_curve"][0], "loss_last": float(np.mean(section["loss_curve"][-10:]))}


def _bar():
    import sys  # noqa: PLC0415

    from tqdm import tqdm  # noqa: PLC0415

    return (lambda steps: tqdm(steps, desc="fine-tune", unit="step", leave=False)) if sys.stderr.isatty() else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.finetune", description=__doc__.split("\n\n")[0])
    parser.add_argument("setup", choices=SETUPS)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--lr-scale", default="relative", choices=["relative", "absolute"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rows", type=int, default=512, help="training rows (windows or images)")
    parser.add_argument("--seq", type=int, default=64, help="tokens per training window (relufy-llama) or training sentence (minilm)")
    parser.add_argument("--windows", type=int, default=64, help="held-out windows of 256 bytes for perplexity (relufy-llama)")
    parser.add_argument("--loss", default="kl", choices=["distill", "kl"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pipeline", default="canonicalize,relufy", help="the digits ViT's rewrite (vit)")
    parser.add_argument("--json", metavar="PATH", help="also write the row as JSON")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    row = {"relufy-llama": _llama, "vit": _vit, "minilm": _minilm}[args.setup](*((args,) if args.setup == "relufy-llama" else (args, args.pipeline)))
    row = {"setup": args.setup, **{k: getattr(args, k) for k in ("steps", "lr", "lr_scale", "batch", "rows", "seq", "loss", "seed")},
           **({"pipeline": args.pipeline} if args.setup != "relufy-llama" else {}), **row,
           "wall_seconds": round(time.perf_counter() - start, 1)}
    print(json.dumps(row))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(row, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
