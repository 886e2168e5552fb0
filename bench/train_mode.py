"""One fine-tuning loop written by hand on ``to_torch(model, train=True)``: does train mode learn?

    python -m bench.train_mode [--steps 100] [--lr 1e-3] [--batch 32] [--rows 256] [--distill-rows 0] [--threads 1] [--uniform]

The digits ViT after ``ivit`` (calibrated on the first 256 training images, one per sample, as
``bench.finetune ivit-vit`` does) distilled from the FP32 model's logits (MSE) on those same
images, Adam. Learning rates are relative by default (``graphopt.fx.train_parameters.
relative_lr_groups``: each parameter's lr is ``lr`` times its RMS, so an int8 weight, an int32
multiplier near 2^30 and a float scale near 0.01 all move by about the same fraction per step);
``--uniform`` gives every parameter ``lr`` as it is. Top-1 on the 450 test images before and
after, computed twice: by the train-mode module and by ONNX Runtime on the written-back graph
(``graphopt.finetuning.write_back``), which must agree; and the test images' logits MSE and top-1
agreement against the FP32 model (what distillation optimizes, measured on images it never saw).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.train_mode", description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rows", type=int, default=256, help="calibration images (the first rows of the training split)")
    parser.add_argument("--distill-rows", type=int, default=0, help="training images distilled on (0: the calibration images)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (more than 1 on a loaded machine: 10x slower)")
    parser.add_argument("--uniform", action="store_true", help="one lr for every parameter (not relative)")
    args = parser.parse_args(argv)

    import torch  # noqa: PLC0415

    import graphopt  # noqa: PLC0415
    from graphopt.backends import ort  # noqa: PLC0415
    from graphopt.finetuning.write_back import write_back  # noqa: PLC0415
    from graphopt.fx.train_parameters import relative_lr_groups  # noqa: PLC0415
    from graphopt.models import digits_vit  # noqa: PLC0415

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    proto = digits_vit.build()
    x_calib = digits_vit.dataset()[0][: args.rows]
    x_train = digits_vit.dataset()[0][: args.distill_rows or args.rows]
    post = graphopt.compile(proto, "ivit", calib=[{"pixels": x_calib[i:i + 1]} for i in range(len(x_calib))], validate=False).model
    teacher = ort.make_session(graphopt.load(proto), optimization="disable", threads=2)
    targets = torch.from_numpy(teacher.run(None, {"pixels": x_train})[0])
    images = torch.from_numpy(x_train)

    module = graphopt.to_torch(post, train=True)

    def top1_torch() -> float:
        with torch.no_grad():
            return digits_vit.accuracy(lambda feeds: module(**feeds)[0].numpy())

    def top1_ort(model) -> float:
        session = ort.make_session(model, optimization="disable", threads=2)
        return digits_vit.accuracy(lambda feeds: session.run(None, feeds)[0])

    x_test = digits_vit.dataset()[2]
    test_targets = torch.from_numpy(teacher.run(None, {"pixels": x_test})[0])

    def test_fidelity() -> dict:
        """Logits MSE and top-1 agreement with the FP32 model on the test images: what is distilled."""
        with torch.no_grad():
            (logits,) = module(pixels=torch.from_numpy(x_test))
        return {"mse": float(torch.nn.functional.mse_loss(logits, test_targets)),
                "agreement": float((logits.argmax(1) == test_targets.argmax(1)).double().mean())}

    before, fidelity_before = top1_torch(), test_fidelity()
    groups = [{"params": [p for p in module.parameters() if p.requires_grad]}] if args.uniform else relative_lr_groups(module, args.lr)
    optimizer = torch.optim.Adam(groups, lr=args.lr)
    rng = np.random.default_rng(args.seed)
    losses, start = [], time.perf_counter()
    for _ in range(args.steps):
        idx = torch.from_numpy(rng.choice(len(images), size=args.batch, replace=False))
        (logits,) = module(pixels=images[idx])
        loss = torch.nn.functional.mse_loss(logits, targets[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    seconds = time.perf_counter() - start
    trained = {name: module.get_parameter(attr).detach().numpy() for name, attr in module.parameter_names.items()}
    tuned = write_back(post, trained)
    row = {"steps": args.steps, "lr": args.lr, "batch": args.batch, "rows": args.rows, "distill_rows": len(x_train), "relative_lr": not args.uniform,
           "fp32": top1_ort(graphopt.load(proto)), "post_training": top1_ort(post), "post_training_torch": before,
           "fine_tuned_torch": top1_torch(), "fine_tuned_ort": top1_ort(tuned),
           "test_vs_fp32_before": fidelity_before, "test_vs_fp32_after": test_fidelity(),
           "loss_first5": float(np.mean(losses[:5])), "loss_last5": float(np.mean(losses[-5:])),
           "train_seconds": round(seconds, 1)}
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
