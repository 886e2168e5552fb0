"""Fine-tuning gains (graphopt.finetune), side by side with FP32 and post-training.

    python -m bench.finetune relufy-llama [--steps 300] [--lr 1e-3] [--lr-scale relative] [--batch 16] [--rows 512] [--seq 64] [--loss kl]
    python -m bench.finetune relufy-vit | ivit-vit [--steps ...] [--lr ...] [--batch ...] [--rows 512]

``relufy-llama``: stdlib-llama (graphopt.models.stdlib_llama) rewritten ``canonicalize,relufy``
(calibrated on 16 training windows), distilled from the FP32 model on ``--rows`` training windows
of ``--seq`` tokens; held-out perplexity per byte on 64 windows of 256 bytes of files it never saw
(ORT, optimizations off), as bench.sparsity measures it. ``relufy-vit`` / ``ivit-vit``: the digits
ViT, distilled on ``--rows`` training images (calibration: 256 others... the first 256 rows);
top-1 on the 450 test images. Every number is printed with the settings that made it.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

SETUPS = ("relufy-llama", "relufy-vit", "ivit-vit")


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
    parser.add_argument("--seq", type=int, default=64, help="tokens per training window (relufy-llama)")
    parser.add_argument("--windows", type=int, default=64, help="held-out windows of 256 bytes for perplexity (relufy-llama)")
    parser.add_argument("--loss", default="kl", choices=["distill", "kl"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH", help="also write the row as JSON")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    row = _llama(args) if args.setup == "relufy-llama" else _vit(args, "canonicalize,relufy" if args.setup == "relufy-vit" else "ivit")
    row = {"setup": args.setup, **{k: getattr(args, k) for k in ("steps", "lr", "lr_scale", "batch", "rows", "seq", "loss", "seed")}, **row,
           "wall_seconds": round(time.perf_counter() - start, 1)}
    print(json.dumps(row))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(row, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
