"""``python -m graphopt.models.zoo --list`` | ``--build NAME DIR``: the zoo's entries, or one built to DIR."""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import onnx


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m graphopt.models.zoo", description=__doc__)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--list", action="store_true", help="one line per entry: name, family, exporter, opset, form")
    group.add_argument("--build", nargs=2, metavar=("NAME", "DIR"), help="write DIR/NAME.onnx and DIR/NAME.inputs.npz")
    args = parser.parse_args(argv)
    import transformers

    from graphopt.errors import UsageError
    from graphopt.models import zoo

    # The small configs keep the published bos/eos ids outside their small vocabularies; the ids are
    # never used (no generation), so transformers' warning about them is noise on this command's output.
    transformers.logging.set_verbosity_error()
    if args.list:
        for entry in zoo.entries().values():
            print(f"{entry.name:<24} {entry.family:<13} {entry.exporter:<7} opset {entry.opset:<3} {entry.form}")
        return 0
    name, folder = args.build
    try:
        entry = zoo.get(name)
    except UsageError as e:
        print(f"zoo: {e}", file=sys.stderr)
        return 2
    try:
        proto = entry.build()
    except zoo.ExportUnsupported as e:
        print(f"zoo: {e}", file=sys.stderr)
        return 4
    os.makedirs(folder, exist_ok=True)
    onnx.save(proto, os.path.join(folder, f"{name}.onnx"))
    np.savez(os.path.join(folder, f"{name}.inputs.npz"), **entry.example_inputs(0))
    print(os.path.join(folder, f"{name}.onnx"))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # `--list | head`: the reader left; not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
