"""Write a reference model and sample data for it: ``python -m graphopt.models NAME OUTDIR``.

Produces ``OUTDIR/NAME.onnx`` and ``OUTDIR/NAME.calib.npz`` (arrays keyed by input name, stacked
over samples — the form ``graphopt compile --calib`` reads). Real data where the model has it:
the digits test split for ``digits-vit``, tokenized sentences for ``minilm``, train-split windows
of the standard library's source for ``stdlib-llama``.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import onnx

from graphopt.errors import GraphoptError
from graphopt.models import MODELS, get_model


def samples(name: str, count: int) -> list[dict[str, np.ndarray]]:
    module = get_model(name)
    if name == "digits-vit":
        x_test = module.dataset()[2]
        return [{"pixels": chunk} for chunk in np.array_split(x_test, count)]
    if name == "minilm":
        batch = module.tokenize(module.sentences()[:count], seq_len=128)
        return [{k: v[i : i + 1] for k, v in batch.items()} for i in range(count)]
    if name == "stdlib-llama":
        return module.calibration_samples(count)
    return [module.example_inputs(seed=i) for i in range(count)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m graphopt.models", description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(MODELS))
    parser.add_argument("outdir")
    parser.add_argument("--samples", type=int, default=15, help="number of samples in the .npz (default 15)")
    args = parser.parse_args(argv)
    try:
        os.makedirs(args.outdir, exist_ok=True)
        onnx.save(get_model(args.name).build(), os.path.join(args.outdir, f"{args.name}.onnx"))
        batches = samples(args.name, args.samples)
        stacked = {k: np.stack([s[k] for s in batches]) for k in batches[0]}
        np.savez(os.path.join(args.outdir, f"{args.name}.calib.npz"), **stacked)
    except GraphoptError as e:
        print(f"graphopt.models: error: {e}", file=sys.stderr)
        return e.exit_code
    print(f"wrote {args.outdir}/{args.name}.onnx and {args.name}.calib.npz ({len(batches)} samples)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
