"""Differential fuzzing of every pass: the long run of tests/fuzz/test_differential.py.

    python -m bench.fuzz_differential --cases 2000 --seed 0 [--passes gelu,attention] [--show 5]

Case ``i`` is the graph ``graphopt.fuzzing.graphs.build_case(SeededChooser(seed * 1_000_003 + i))``
(deterministic, so a failure is replayed by its seed); a draw that is not a valid model is
counted as ``invalid`` and not retried. Every pass then runs on every case
(``graphopt.fuzzing.differential.check_pass``). Prints per pass the cases tried and how many
fired, declined, failed, and were skipped (ONNX Runtime cannot run the original: no kernel for
that op/dtype), then each failure (first ``--show`` per pass) with its case seed. Exit 1 on any failure.
"""

from __future__ import annotations

import argparse
import collections
import logging
import sys
import time

from graphopt.fuzzing.differential import ALL_PASSES, check_pass
from graphopt.fuzzing.graphs import SeededChooser, build_case


def case_seed(seed: int, case: int) -> int:
    return seed * 1_000_003 + case


def fuzz(cases: int, seed: int = 0, passes: list[str] | None = None):
    names = passes or list(ALL_PASSES)
    counts = {name: collections.Counter() for name in names}
    failures = collections.defaultdict(list)
    invalid = 0
    for i in range(cases):
        case = build_case(SeededChooser(case_seed(seed, i)))
        if case is None:
            invalid += 1
            continue
        for name in names:
            outcome = check_pass(case, name)
            counts[name][outcome.status] += 1
            if outcome.status == "failed":
                failures[name].append((case_seed(seed, i), case.description, outcome.detail))
    return counts, failures, invalid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--passes", default=None, help="comma-separated subset (default: all)")
    parser.add_argument("--show", type=int, default=3, help="failures printed per pass")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # calibrating passes warn about synthetic data on each case
    start = time.perf_counter()
    counts, failures, invalid = fuzz(args.cases, args.seed, args.passes.split(",") if args.passes else None)
    print(f"{args.cases} cases (seed {args.seed}), {invalid} invalid draws, {time.perf_counter() - start:.0f} s")
    print(f"{'pass':<20}{'graphs':>8}{'fired':>8}{'declined':>10}{'failed':>8}{'skipped':>9}")
    for name, c in counts.items():
        print(f"{name:<20}{sum(c.values()):>8}{c['fired']:>8}{c['declined']:>10}{c['failed']:>8}{c['skipped']:>9}")
    for name, found in failures.items():
        for case_seed_, description, detail in found[: args.show]:
            print(f"FAIL {name} case-seed {case_seed_}: {description}\n    {detail.strip()[-800:]}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
