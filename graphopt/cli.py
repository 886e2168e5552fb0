"""The `graphopt` command line: compile, check, passes, inspect, explain, bench, finetune (graphopt/finetuning/command.py).

Exit codes (BRIEF §4): 0 ok; 1 a numeric check failed, or the integer-only check did (a float op
between QuantizeLinear and DequantizeLinear, or no integer region at all), or `check` found a
regression against its baseline; 2 usage error (for `check` also: no baseline without --update,
a baseline of another model or pipeline);
3 unreadable or invalid model; 4 unsupported op or target; 5 internal error. Errors print one
line; ``--debug`` adds the traceback. Only the standard library loads at start-up, so
`graphopt --help` and `graphopt passes` answer fast; each command imports what it needs.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from graphopt.backends import split_targets
from graphopt.errors import EXIT_OK, GraphoptError, UsageError

__all__ = ["main"]

MAX_ERROR_CHARS = 400  # a 100 kB pipeline string must not come back whole in the one-line error
INTEGER_ONLY_PREFIX = "integer-only: "  # the report's violation from the integer-only verifier
EXIT_CODES_HELP = "exit codes: 0 ok, 1 numeric or integer-only check failed, 2 usage error, 3 bad model, 4 unsupported op/target, 5 internal error"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints usage + error otherwise)
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _progress(args, terminal):
    if args.quiet or not (terminal.isatty() or args.progress):
        return None
    from tqdm import tqdm  # noqa: PLC0415

    return lambda items: tqdm(items, desc="passes", unit="pass", file=terminal, leave=False)


def _terminal():
    """The user's stderr, for the spinner and progress bars: a stage may point file descriptor 2
    elsewhere while it runs (``_native_log``), and they must still reach the terminal."""
    try:
        return os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1)
    except (OSError, ValueError, AttributeError):  # no real descriptor (embedded, pytest's capsys)
        return sys.stderr


def _native_log(targets: list[str]):
    """Around each stage of a run with a TVM target: TVM's C++ log lines (written to stderr behind
    Python's back, "Fast mode segfaults ...") go to the debug log (``--debug`` shows them)."""
    import contextlib  # noqa: PLC0415

    if all(t == "onnx" for t in targets):
        return contextlib.nullcontext
    from graphopt.backends.tvm._log import tvm_log_to_debug  # noqa: PLC0415

    return tvm_log_to_debug


def _phases(args, console, terminal, native_log):
    """Each compile stage by name with its time on stdout (not with --quiet or --json); on a
    terminal a spinner on stderr names the stage that is running."""
    import contextlib  # noqa: PLC0415
    import time  # noqa: PLC0415

    from rich.console import Console  # noqa: PLC0415

    shown = not (args.quiet or getattr(args, "json", False))
    spinner = Console(file=terminal) if shown and terminal.isatty() else None

    @contextlib.contextmanager
    def phase(name: str):
        start = time.perf_counter()
        with spinner.status(f"{name} ...") if spinner else contextlib.nullcontext(), native_log():
            yield
        if shown:
            console.print(f"[dim]phase[/dim] {name:<13} {time.perf_counter() - start:6.1f} s", highlight=False)

    return phase


def _console(args):
    from rich.console import Console  # noqa: PLC0415

    return Console(stderr=False, quiet=args.quiet, width=None if sys.stdout.isatty() else 140)


def cmd_compile(args) -> int:
    terminal = _terminal()
    try:
        return _compile(args, terminal)
    finally:
        if terminal is not sys.stderr:
            terminal.close()


def _compile(args, terminal) -> int:
    from graphopt import api, outdir, storage  # noqa: PLC0415
    from graphopt.metrics import AUTO, Tolerances  # noqa: PLC0415

    outdir.check_writable(args.output)  # fail before any work when -o is unusable (nothing is created yet)
    if args.report:
        _check_report_path(args.report, [args.model, *(args.calib or []), *(args.eval or [])])
    tolerances = Tolerances(atol=args.atol, rtol=args.rtol, min_cosine=AUTO if args.min_cosine is None else args.min_cosine,
                            min_sqnr=args.min_sqnr, min_top1=args.min_top1, allow_nonfinite=args.allow_nonfinite)
    calib = _data_argument(args.calib)
    console = _console(args)
    targets = split_targets(args.targets)
    result = api.compile(
        args.model,
        args.passes,
        calib=calib,
        targets=targets,
        input_shapes=args.input_shape,
        validate=not args.no_validate,
        validate_each=args.validate_each,
        integer_only=args.integer_only,
        tolerances=tolerances,
        seed=args.seed,
        threads=args.threads,
        **({} if args.bench_runs is None else {"bench_runs": args.bench_runs}),  # api.BENCH_RUNS otherwise
        ort_optimization=args.ort_optimization,
        progress=_progress(args, terminal),
        tune_budget=args.tune_budget,
        tune_database=args.tune_database,
        phases=_phases(args, console, terminal, _native_log(targets)),
        mask=None if args.mask == "none" else args.mask,
        eval=_data_argument(args.eval),
        outputs=_names(args.outputs),
        ignore_outputs=tuple(_names(args.ignore_output) or ()),
        profile=args.profile,
        budget=args.budget,
    )
    if args.report:
        _check_report_path(args.report, result.input_files)
    written = result.save(args.output, force=args.force)
    if args.report:
        storage.atomic_write_text(args.report, result.report.to_json())
    if args.json:
        sys.stdout.write(result.report.to_json())
    else:
        result.print_report(console, verbose=args.verbose)
        from rich.markup import escape  # noqa: PLC0415

        _print_budget(console, result.report.data.get("budget"))
        if args.bench_runs is None:
            console.print("[dim]latency not timed: add --bench-runs 10 to time the original and each target[/dim]")
        console.print(f"wrote {escape(', '.join(written))}")
    if not result.ok:
        first = result.report.violations[0]
        what = "integer-only check failed" if first.startswith(INTEGER_ONLY_PREFIX) else "numeric check failed"
        hint = f" (hint: {result.report.hints[0]})" if result.report.hints else ""
        print(f"graphopt: {what}: {first.removeprefix(INTEGER_ONLY_PREFIX)}{hint}", file=sys.stderr)
        return 1
    return EXIT_OK


def _print_budget(console, budget: dict | None) -> None:
    """What --budget did: the metric before and after, what was rolled back, what the search cost."""
    if not budget:
        return
    from rich.markup import escape  # noqa: PLC0415

    def number(value):
        return "inf" if value is None else f"{value:.8g}"

    verdict = "kept" if budget["met"] else "[red]missed[/red]"
    rolled = budget["rolled_back"]
    console.print(f"budget {budget['metric']}>={budget['floor']:.10g} {verdict}: {number(budget['initial'])} -> {number(budget['final'])}, "
                  f"{len(rolled)} rewrite(s) rolled back, {budget['validation_runs']} validation run(s)")
    for site in rolled:
        console.print(f"  rolled back {escape(site['pass'])} / {escape(site['rule'])} at node {escape(site['node'])}")
    if not budget["met"]:
        console.print(f"  [red]{escape(budget['problem'])}[/red]")


def _data_argument(values: list[str] | None):
    """``--calib``/``--eval`` values: one file or folder, or ``name:file.npy`` pairs."""
    if not values:
        return None
    return values[0] if len(values) == 1 and ":" not in values[0] else values


def _names(values: list[str] | None) -> tuple[str, ...] | None:
    """Repeatable, comma-separated name flags: ``--outputs a,b --outputs c``."""
    return tuple(n.strip() for v in values for n in v.split(",") if n.strip()) if values else None


def _check_report_path(path: str, inputs, flag: str = "--report") -> None:
    """A report path (``--report``, ``--junit``, ``--html``) must name a file in a writable folder, and none of the run's inputs."""
    from graphopt.outdir import same_file  # noqa: PLC0415

    if os.path.isdir(path):
        example = {"--junit": "results.xml", "--html": "report.html"}.get(flag, "report.json")
        raise UsageError(f"{flag} {path} is a folder; give a file path such as {os.path.join(path, example)}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: folder {folder} does not exist or is not writable")
    for item in inputs:
        candidate = item if os.path.exists(item) else item.partition(":")[2]
        if candidate and os.path.exists(path) and os.path.exists(candidate) and same_file(path, candidate):
            raise UsageError(f"{flag} {path} is this run's input {item}; choose another path")


def cmd_check(args) -> int:
    terminal = _terminal()
    try:
        return _check(args, terminal)
    finally:
        if terminal is not sys.stderr:
            terminal.close()


def _check(args, terminal) -> int:
    from graphopt import gate, storage  # noqa: PLC0415

    for flag, path in (("--junit", args.junit), ("--html", args.html)):
        if path:
            _check_report_path(path, [args.model, args.baseline, *(args.calib or [])], flag)
    console = _console(args)
    targets = split_targets(args.targets)
    result = gate.check(args.model, args.passes, baseline=args.baseline, calib=_data_argument(args.calib), targets=targets,
                         input_shapes=args.input_shape, bench_runs=args.bench_runs, update=args.update, seed=args.seed,
                         threads=args.threads, phases=_phases(args, console, terminal, _native_log(targets)), budget=args.budget)
    if args.junit:
        storage.atomic_write_text(args.junit, result.junit())
    if args.html:
        from graphopt.report_html import write_html  # noqa: PLC0415

        write_html(args.html, result.report, check=result)
    if args.json:
        sys.stdout.write(result.to_json())
    else:
        gate.render(result, console)
        _print_budget(console, result.report.data.get("budget"))
    if not result.ok:
        first, more = result.failures[0], len(result.failures) - 1
        also = f" (and {more} more)" if more else ""
        print(f"graphopt: check failed: {first.message()}{also}; if the change is intended, record it with --update", file=sys.stderr)
        return 1
    return EXIT_OK


def cmd_passes(args) -> int:
    from graphopt import registry  # noqa: PLC0415

    catalog = registry.catalog()
    if args.json:
        import json  # noqa: PLC0415

        print(json.dumps(catalog, indent=2))
        return EXIT_OK
    width = max(len(p["name"]) for p in [*catalog["passes"], *catalog["presets"]])
    categories = {**PASS_CATEGORIES, **{p["category"]: p["category"] for p in catalog["passes"] if p["category"] not in PASS_CATEGORIES}}
    for category, title in categories.items():
        print(f"{title}:")
        for p in (p for p in catalog["passes"] if p["category"] == category):
            print(f"  {p['name']:<{width}} {p['summary']}")
            if p["options"]:
                options = ", ".join(f"{o['name']}: {o['type']} = {o['default']!r}" for o in p["options"])
                print(f"  {'':<{width}}   options: {options}")
        print()
    print("presets:")
    for p in catalog["presets"]:
        print(f"  {p['name']:<{width}} {p['summary']}\n  {'':<{width}}   = {p['pipeline']}")
    return EXIT_OK


# pass categories in the order `graphopt passes` lists them, with their headings
PASS_CATEGORIES = {
    "cleanup": "cleanup (exact, any pipeline)",
    "canonicalize": "canonicalize (exporter spellings -> one canonical node each, exact)",
    "rewrite": "rewrite (approximating: quantized, integer-only; the checks hold them to a 0.99 cosine floor)",
    "backend": "backend (run by the TVM backend before import; usable in any pipeline)",
}


def cmd_inspect(args) -> int:
    from graphopt import inspection  # noqa: PLC0415

    if args.integer_only:
        verdict = inspection.integer_only(args.model, input_shapes=args.input_shape)
        if args.json:
            import json  # noqa: PLC0415

            print(json.dumps(verdict.as_dict(), indent=2))
        elif not args.quiet:
            print("\n".join(verdict.lines()))
        if not verdict.ok:
            print(f"graphopt: integer-only check failed: {verdict.summary().removeprefix('integer-only: ')}", file=sys.stderr)
            return 1
        return EXIT_OK
    info = inspection.inspect(args.model, input_shapes=args.input_shape)
    if args.json:
        import json  # noqa: PLC0415

        print(json.dumps(info, indent=2, default=str))
    else:
        inspection.render(info, _console(args))
    return EXIT_OK


def cmd_explain(args) -> int:
    from graphopt import inspection  # noqa: PLC0415

    lines = inspection.explain(args.model, args.passes, input_shapes=args.input_shape, calib=_data_argument(args.calib))
    print("\n".join(lines))
    return EXIT_OK


def cmd_bench(args) -> int:
    import subprocess  # noqa: PLC0415

    from graphopt import bench  # noqa: PLC0415
    from graphopt.errors import UnsupportedError  # noqa: PLC0415

    if args.help and not args.names:
        args.parser.print_help()
        return EXIT_OK
    if args.list:
        for b in bench.BENCHMARKS.values():
            missing = bench.missing_extras(b)
            needs = f" [needs {', '.join(b.needs)}{': ' + ', '.join(missing) + ' not installed' if missing else ''}]" if b.needs else ""
            print(f"{b.name:<18} {b.summary}{needs}")
        print(f"\ndefault (no NAME): {' '.join(bench.DEFAULT)}; options after the names go to each (graphopt bench NAME --help)")
        return EXIT_OK
    names = args.names or list(bench.DEFAULT)
    unknown = [n for n in names if n not in bench.BENCHMARKS]
    if unknown:
        raise UsageError(f"unknown benchmark {', '.join(unknown)} (valid: {', '.join(bench.BENCHMARKS)}; see `graphopt bench --list`)")
    missing = [(name, extra, modules) for name in names for extra, modules in bench.missing_extras(bench.BENCHMARKS[name]).items()]
    if missing:  # before anything runs
        name, extra, modules = missing[0]
        raise UnsupportedError(f"benchmark {name} needs the {extra} extra ({', '.join(modules)} not installed): pip install 'graphopt[{extra}]'")
    options = [*args.options, *(["--help"] if args.help else [])]
    failed = EXIT_OK
    for name in names:
        if not args.quiet:
            print(f"== graphopt bench {name} {' '.join(options)}".rstrip(), flush=True)
        code = subprocess.run([sys.executable, *bench.BENCHMARKS[name].argv(), *options], check=False).returncode
        if code:
            print(f"graphopt: benchmark {name} exited with {code}", file=sys.stderr)
            failed = failed or code
    return failed


def _version() -> str:
    from importlib import metadata  # noqa: PLC0415 — the installed version, without importing graphopt's heavy parts

    try:
        return metadata.version("graphopt")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _common_flags(default) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quiet", action="store_true", default=default, help="print nothing but errors")
    common.add_argument("--debug", action="store_true", default=default, help="verbose logs and full tracebacks")
    return common


def build_parser() -> argparse.ArgumentParser:
    # The flags work before and after the command; the command's copy must not reset a flag given
    # before it (`graphopt --quiet compile ...`), hence SUPPRESS as its default.
    common = _common_flags(argparse.SUPPRESS)
    parser = _Parser(prog="graphopt", description="Rewrite ONNX transformer graphs with named passes, check the numerics, compile.",
                     epilog=EXIT_CODES_HELP, parents=[_common_flags(False)])
    parser.add_argument("--version", action="version", version=f"graphopt {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    from graphopt.finetuning.command import add_parser as _add_finetune  # noqa: PLC0415 — standard library only

    for add in (_add_compile, _add_check, _add_passes, _add_inspect, _add_explain, _add_bench, _add_finetune):
        add(sub, common)
    return parser


def _add_compile(sub, common) -> None:
    c = sub.add_parser("compile", parents=[common], help="rewrite a model, validate it, build targets", epilog=EXIT_CODES_HELP)
    c.add_argument("model", help="an .onnx file")
    c.add_argument("-o", "--output", default="graphopt-out", help="output folder (default: graphopt-out)")
    c.add_argument("--passes", default="canonicalize", help="pipeline, e.g. 'canonicalize,gelu' (see `graphopt passes`)")
    c.add_argument("--targets", default="onnx",
                   help="comma-separated targets: onnx, tvm-llvm, tvm-aarch64, tvm-cuda, or a TVM target as a JSON dict "
                        "(default: onnx)")
    c.add_argument("--calib", action="append", metavar="DATA", help=".npz, .npy, a folder, or name:file.npy (repeatable)")
    c.add_argument("--input-shape", action="append", metavar="NAME:D0,D1", help="fix an input's shape (repeatable)")
    c.add_argument("--eval", action="append", metavar="DATA",
                   help="held-out data for the accuracy checks, parity and latency (forms as --calib; default: the --calib samples)")
    c.add_argument("--report", metavar="PATH", help="also write report.json here")
    c.add_argument("--force", action="store_true",
                   help="replace files in -o that graphopt did not write, or that are this run's inputs (refused otherwise)")
    c.add_argument("--json", action="store_true", help="print the report as JSON instead of tables")
    c.add_argument("--verbose", action="store_true", help="print every per-layer error row (default: the worst 10)")
    c.add_argument("--atol", type=float, help="max abs error allowed (with --rtol)")
    c.add_argument("--rtol", type=float, help="relative error allowed, times the output's max magnitude")
    c.add_argument("--min-cosine", type=float, default=None,
                   help="minimum cosine vs the original (default 0.999; 0.99 when the pipeline has an approximating pass: "
                        "int8-linear, shiftmax, ivit, ...)")
    c.add_argument("--min-sqnr", type=float, help="minimum SQNR in dB")
    c.add_argument("--min-top1", type=float, help="minimum top-1 agreement for logits outputs")
    c.add_argument("--allow-nonfinite", action="store_true",
                   help="accept NaN/Inf outputs where the original and the rewritten model agree (a failed check otherwise)")
    c.add_argument("--mask", default="auto", metavar="INPUT",
                   help="input whose zeros mark padding: accuracy metrics leave those positions out "
                        "(default: auto, an integer attention_mask-like input; 'none' compares every position)")
    c.add_argument("--outputs", action="append", metavar="NAMES", help="check only these outputs (comma-separated, repeatable)")
    c.add_argument("--ignore-output", action="append", metavar="NAMES",
                   help="measure and report these outputs but do not check them (e.g. an unused pooler output)")
    c.add_argument("--no-validate", action="store_true", help="skip the comparison with the original")
    c.add_argument("--integer-only", action=argparse.BooleanOptionalAction, default=None,
                   help="verify the result is integer between its QuantizeLinear and DequantizeLinear nodes "
                        "(default: on when the pipeline names the ivit preset); a float op there, or no integer "
                        "region at all, is exit 1 (files still written)")
    c.add_argument("--validate-each", action="store_true", help="compare with the original after every pass")
    c.add_argument("--budget", metavar="METRIC=FLOOR",
                   help="a floor on the worst checked output (cosine=0.995, sqnr=30, top1=0.99): the rewrites that miss it are "
                        "found by bisection and rolled back; exit 1 when it cannot be kept (docs/check.md)")
    c.add_argument("--bench-runs", type=int, metavar="N",
                   help="time the original and each target over N runs (median), e.g. 10 (default: as graphopt.compile, "
                        "no timing; latency is opt-in and best-effort)")
    c.add_argument("--profile", action="store_true",
                   help="time every kernel of each TVM target (report: slowest kernels, the schedule rule each got, "
                        "and the share of time in kernels that fell to the generic fallback)")
    c.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads (default 2)")
    c.add_argument("--ort-optimization", default="all", choices=["disable", "basic", "extended", "all"],
                   help="ONNX Runtime graph optimization level for the onnx target and timing (default all)")
    c.add_argument("--tune-budget", type=int, default=0, metavar="TRIALS",
                   help="MetaSchedule trials for tvm-llvm on top of graphopt's schedule rules (default 0: no tuning; "
                        "about 3 s per trial on 2 cores); the records are saved in <target>/tuning")
    c.add_argument("--tune-database", metavar="DIR",
                   help="apply (and, with --tune-budget, extend) tuning records from an earlier run's <target>/tuning")
    c.add_argument("--seed", type=int, default=0, help="seed of synthetic inputs")
    c.add_argument("--progress", action="store_true", help="show progress bars even when stderr is not a terminal")
    c.set_defaults(run=cmd_compile)


def _add_check(sub, common) -> None:
    c = sub.add_parser("check", parents=[common], help="run a pipeline and compare it with a committed baseline (CI gate)",
                       epilog="exit codes: 0 the baseline holds, 1 a field regressed beyond its tolerance, 2 usage error "
                              "(also: no baseline without --update, a baseline of another model or pipeline), 3 bad model, "
                              "4 unsupported op/target, 5 internal error")
    c.add_argument("model", help="an .onnx file")
    c.add_argument("--passes", default="canonicalize", help="pipeline, e.g. 'canonicalize' (as recorded in the baseline)")
    c.add_argument("--baseline", required=True, metavar="PATH", help="the baseline file, e.g. graphopt.lock.json")
    c.add_argument("--update", action="store_true",
                   help="write the baseline from this run (atomically; its tolerances are kept) and print what changed")
    c.add_argument("--calib", action="append", metavar="DATA", help=".npz, .npy, a folder, or name:file.npy (repeatable)")
    c.add_argument("--input-shape", action="append", metavar="NAME:D0,D1", help="fix an input's shape (repeatable)")
    c.add_argument("--targets", default="onnx", help="comma-separated targets, as for compile (default: onnx)")
    c.add_argument("--bench-runs", type=int, default=0, metavar="N",
                   help="time the original and each target over N runs and check the ratios (default 0: no latency)")
    c.add_argument("--junit", metavar="PATH", help="also write JUnit XML: one test case per checked field group")
    c.add_argument("--html", metavar="PATH", help="also write the HTML report of the run with the comparison (self-contained)")
    c.add_argument("--budget", metavar="METRIC=FLOOR",
                   help="roll back the rewrites that miss this floor (as compile --budget) before comparing; a floor that "
                        "cannot be kept fails the check")
    c.add_argument("--json", action="store_true", help="print the comparison as JSON instead of tables")
    c.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads (default 2)")
    c.add_argument("--seed", type=int, default=0, help="seed of synthetic inputs (without --calib)")
    c.set_defaults(run=cmd_check)


def _add_passes(sub, common) -> None:
    p = sub.add_parser("passes", parents=[common], help="list passes, their options and presets")
    p.add_argument("--json", action="store_true", help="print the catalog as JSON")
    p.set_defaults(run=cmd_passes)


def _add_inspect(sub, common) -> None:
    i = sub.add_parser("inspect", parents=[common], help="inputs, outputs, op histogram, parameters, detected patterns",
                       epilog=EXIT_CODES_HELP)
    i.add_argument("model")
    i.add_argument("--input-shape", action="append", metavar="NAME:D0,D1", help="fix an input's shape (repeatable)")
    i.add_argument("--json", action="store_true", help="print the inspection as JSON")
    i.add_argument("--integer-only", action="store_true",
                   help="only verify that every node between a QuantizeLinear and a DequantizeLinear is integer "
                        "(graphopt ops inlined): one line per float op found there; exit 1 when there is one, "
                        "or when the model has no integer region at all")
    i.set_defaults(run=cmd_inspect)


def _add_explain(sub, common) -> None:
    e = sub.add_parser("explain", parents=[common], help="what each pass would rewrite, and the near misses with reasons")
    e.add_argument("model")
    e.add_argument("--passes", default="canonicalize", help="pipeline to explain (default: canonicalize)")
    e.add_argument("--input-shape", action="append", metavar="NAME:D0,D1", help="fix an input's shape (repeatable)")
    e.add_argument("--calib", action="append", metavar="DATA",
                   help="calibration data for the passes that calibrate, as for compile: .npz, .npy, a folder, or name:file.npy "
                        "(repeatable; default: seeded synthetic inputs)")
    e.set_defaults(run=cmd_explain)


def _add_bench(sub, common) -> None:
    b = sub.add_parser("bench", parents=[common], add_help=False, help="run the benchmarks behind the README's numbers on this host",
                       usage="graphopt bench [--list] [NAME ...] [BENCHMARK OPTIONS]",
                       description="Each benchmark runs in a fresh process and prints its ratios against a baseline timed "
                                   "in the same run. Options after the names go to each named benchmark.",
                       epilog=EXIT_CODES_HELP + "; otherwise the first failing benchmark's own exit code")
    from graphopt.bench import DEFAULT  # noqa: PLC0415 — standard library only

    b.add_argument("names", nargs="*", metavar="NAME", help=f"benchmarks to run (default: {' '.join(DEFAULT)}; see --list)")
    b.add_argument("--list", action="store_true", help="list the benchmarks, what each measures and the extras it needs")
    b.add_argument("-h", "--help", action="store_true", help="this help; after a NAME, that benchmark's options")
    b.set_defaults(run=cmd_bench, options=[], parser=b)


class _Terminated(BaseException):  # noqa: N818 — like KeyboardInterrupt, not an error
    pass


def _terminate(signum, frame):
    raise _Terminated


def _clip(text: str) -> str:
    text = " ".join(text.split("\n"))
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 20] + f" … ({len(text)} characters)"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)  # unwinds like Ctrl-C: staging folders are removed, nothing half-written stays
    logging.basicConfig(level=logging.DEBUG if debug else logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        if getattr(args, "command", None) == "bench":
            args.options = extra  # the benchmark's own options, checked by its parser
        elif extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        if not getattr(args, "run", None):
            build_parser().print_help()
            return 2
        return args.run(args)
    except GraphoptError as e:
        if debug:
            raise
        print(f"graphopt: error: {_clip(str(e))}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("graphopt: interrupted", file=sys.stderr)
        return 130
    except _Terminated:
        print("graphopt: terminated", file=sys.stderr)
        return 143
    except Exception as e:  # an internal error: one line unless --debug
        if debug:
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"graphopt: internal error: {type(e).__name__}: {_clip(first)} (rerun with --debug for the traceback)", file=sys.stderr)
        return 5


if __name__ == "__main__":
    sys.exit(main())
