"""`graphopt finetune REWRITTEN.onnx --teacher ORIGINAL.onnx --data DATA -o OUT/` (standard library
at import: `graphopt --help` stays fast). Under ``torchrun`` every rank trains; rank 0 writes."""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_parser"]

EPILOG = ("exit codes: 0 ok, 1 the fine-tuned model fails the validation against the teacher (files still written), "
          "2 usage error (bad flag, data that does not fit the model, a teacher with other inputs/outputs, an unusable -o), "
          "3 unreadable model or teacher, 4 an op graphopt.to_torch cannot convert, 5 internal error")


def add_parser(sub, common) -> None:
    f = sub.add_parser("finetune", parents=[common], help="distill a rewritten model from the original, write the weights back",
                       description="Knowledge distillation of a rewritten model from its original: the rewritten graph as a "
                                   "torch module, trained on the original's outputs, the weights written back into the graph, "
                                   "validated against the original on held-out data (docs/finetune.md). Runs under torchrun "
                                   "(gloo) too: the global batch is split over the processes.",
                       epilog=EPILOG)
    f.add_argument("model", help="the rewritten .onnx file (graphopt compile's model.onnx)")
    f.add_argument("--teacher", required=True, metavar="ORIGINAL", help="the original .onnx file it was rewritten from")
    f.add_argument("--data", action="append", required=True, metavar="DATA",
                   help="training data: .npz, .npy, a folder, or name:file.npy (repeatable); cut into rows along axis 0")
    f.add_argument("--eval", action="append", metavar="DATA",
                   help="held-out data for the validation (forms as --data; default: --holdout of the --data rows)")
    f.add_argument("-o", "--output", default="graphopt-finetune", help="output folder (default: graphopt-finetune)")
    f.add_argument("--steps", type=int, default=200, help="optimizer steps (default 200)")
    f.add_argument("--lr", type=float, default=1e-3,
                   help="Adam learning rate: with --lr-scale relative, each tensor's change per step relative to its RMS (default 1e-3)")
    f.add_argument("--lr-scale", default="relative", choices=["relative", "absolute"],
                   help="relative: lr times each tensor's RMS (int8 latents, scales and float weights alike); absolute: plain Adam "
                        "(default relative)")
    f.add_argument("--batch-size", type=int, default=8, help="global batch in rows, split over torchrun's processes (default 8)")
    f.add_argument("--loss", default="distill", choices=["distill", "kl"],
                   help="distill: MSE of every float output over the teacher's variance; kl: softmax KL at --temperature "
                        "(logits) (default distill)")
    f.add_argument("--temperature", type=float, default=2.0, help="softmax temperature of --loss kl (default 2)")
    f.add_argument("--layer-loss", type=float, default=1.0, metavar="W",
                   help="weight of the per-layer targets: each block a pass replaced (an attention made linear) against "
                        "the teacher's value it replaced (default 1; 0: the outputs only)")
    f.add_argument("--trainable", action="append", metavar="PATTERN",
                   help="train only initializers matching this fnmatch pattern (repeatable; default: every parameter)")
    f.add_argument("--lora-rank", type=int, metavar="R", help="train rank-R LoRA adapters on the linear weights instead (merged on write-back)")
    f.add_argument("--lora-layers", action="append", metavar="PATTERN",
                   help="fnmatch patterns of the weights or nodes to adapt (repeatable; default: every linear weight)")
    f.add_argument("--holdout", type=float, default=0.2, help="fraction of the --data rows held out for validation (default 0.2)")
    f.add_argument("--seed", type=int, default=0, help="seed of the held-out split, the batch order and torch (default 0)")
    f.add_argument("--min-cosine", type=float, default=None, help="minimum cosine vs the teacher (default 0.99)")
    f.add_argument("--min-top1", type=float, help="minimum top-1 agreement with the teacher for logits outputs")
    f.add_argument("--mask", default="auto", metavar="INPUT",
                   help="input whose zeros mark padding, left out of the metrics (default: auto; 'none' compares every position)")
    f.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads for the teacher and the validation (default 2)")
    f.add_argument("--force", action="store_true", help="replace files in -o that graphopt did not write")
    f.add_argument("--json", action="store_true", help="print the report as JSON")
    f.add_argument("--progress", action="store_true", help="show the progress bar even when stderr is not a terminal")
    f.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from graphopt import cli, outdir  # noqa: PLC0415
    from graphopt.errors import EXIT_OK  # noqa: PLC0415
    from graphopt.finetuning.run import finetune  # noqa: PLC0415
    from graphopt.metrics import AUTO, Tolerances  # noqa: PLC0415

    outdir.check_writable(args.output)  # before any work: nothing is created yet
    terminal = cli._terminal()
    try:
        result = finetune(args.model, args.teacher, cli._data_argument(args.data), eval=cli._data_argument(args.eval),
                          steps=args.steps, lr=args.lr, lr_scale=args.lr_scale, batch_size=args.batch_size, loss=args.loss,
                          temperature=args.temperature, layer_loss=args.layer_loss,
                          trainable=cli._names(args.trainable), lora=_lora(args), holdout=args.holdout, seed=args.seed, threads=args.threads,
                          tolerances=Tolerances(min_cosine=AUTO if args.min_cosine is None else args.min_cosine, min_top1=args.min_top1),
                          mask=None if args.mask == "none" else args.mask, progress=_progress(args, terminal))
    finally:
        if terminal is not sys.stderr:
            terminal.close()
    if not result.world.main:
        return EXIT_OK  # rank 0 validates and writes
    written = result.save(args.output, force=args.force)
    if args.json:
        sys.stdout.write(result.report.to_json())
    else:
        _summary(cli._console(args), result, written)
    if not result.ok:
        print(f"graphopt: numeric check failed: {result.report.violations[0]}", file=sys.stderr)
        return 1
    return EXIT_OK


def _lora(args) -> dict | None:
    if args.lora_rank is None:
        if args.lora_layers:
            from graphopt.errors import UsageError  # noqa: PLC0415

            raise UsageError("--lora-layers needs --lora-rank")
        return None
    return {"rank": args.lora_rank, "layers": list(args.lora_layers or ["*"])}


def _progress(args, terminal):
    if args.quiet or not (terminal.isatty() or args.progress):
        return None
    from tqdm import tqdm  # noqa: PLC0415

    return lambda steps: tqdm(steps, desc="fine-tune", unit="step", file=terminal, leave=False)


def _summary(console, result, written) -> None:
    from rich.markup import escape  # noqa: PLC0415

    section = result.report.data["finetune"]
    losses = section["loss_curve"]
    console.print(f"fine-tuned {section['steps']} steps (lr {section['lr']:g}, batch {section['batch_size']}, "
                  f"{section['world_size']} process(es)) in {section['seconds']:.1f} s: loss {losses[0]:.4g} -> {losses[-1]:.4g}")
    for output, after in section.get("metrics_after", {}).items():
        before = section["metrics_before"].get(output, {})
        top1 = f", top-1 {before.get('top1'):.4f} -> {after.get('top1'):.4f}" if after.get("top1") is not None else ""
        console.print(f"  {escape(output)}: cosine {_num(before.get('cosine'))} -> {_num(after.get('cosine'))}, "
                      f"SQNR {_num(before.get('sqnr_db'))} -> {_num(after.get('sqnr_db'))} dB{top1} "
                      f"(vs the teacher, {section['examples']['held_out']} held-out rows)")
    console.print(f"wrote {escape(', '.join(written))}")


def _num(value) -> str:
    return "n/a" if value is None else f"{value:.6g}"
