"""Conformance: the ONNX backend node test cases, run before and after a pipeline.

Every case onnxruntime passes on its own must still pass after the pipeline (run in-process
through ``graphopt.compile``), with the case's expected outputs and tolerances. The `onnx`
wheel ships the case generators, not the files: ``collect_testcases()`` builds ~1,900 cases
(model, input/output data sets, rtol/atol) in seconds.

    python -m graphopt.conformance --passes canonicalize [--filter gelu] [--json out.json]

``--target tvm-llvm`` runs the rewritten model through the TVM backend instead: the TVM preflight
either refuses the case (status "refused", with the op it names) or the case is compiled and every
data set must match the expected outputs. Each case runs in a long-lived worker process that is
replaced when a case crashes it or runs past ``--timeout`` (status "fail" with the reason).

    python -m graphopt.conformance --target tvm-llvm --workers 1 [--filter relu] [--json out.json]
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import multiprocessing
import re
import sys
import warnings
from collections.abc import Sequence

import numpy as np

__all__ = ["CaseResult", "run_case", "run_suite"]

# Canonical ops the `*_expanded` cases must turn into (case-name prefix -> op types).
EXPECTED_CANONICAL = {
    "test_gelu": ("Gelu",),
    "test_layer_normalization": ("LayerNormalization",),
    "test_rms_normalization": ("RMSNormalization",),
    "test_attention": ("pkg.graphopt::",),
}


@dataclasses.dataclass
class CaseResult:
    name: str
    status: str  # "pass", "fail", "ort-fails" (baseline fails: not counted), "error", "refused" (TVM preflight)
    reason: str = ""
    canonical: list[str] = dataclasses.field(default_factory=list)
    refused_op: str = ""  # the op the TVM preflight named when it refused the case


def _cases(pattern: str | None):
    import onnx.backend.test.case.node as node_cases  # noqa: PLC0415

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        cases = node_cases.collect_testcases(None)
    regex = re.compile(pattern) if pattern else None
    return [c for c in cases if regex is None or regex.search(c.name)]


def _close(expected, actual, rtol: float, atol: float) -> str:
    """Empty string when equal within tolerance, else what differs."""
    if isinstance(expected, (list, tuple)):
        if not isinstance(actual, (list, tuple)) or len(expected) != len(actual):
            return "sequence length differs"
        for e, a in zip(expected, actual):
            problem = _close(e, a, rtol, atol)
            if problem:
                return problem
        return ""
    if expected is None:
        return "" if actual is None else "expected no value"
    expected = np.asarray(expected)
    actual = np.asarray(actual)
    if expected.shape != actual.shape:
        return f"shape {actual.shape} != expected {expected.shape}"
    if expected.dtype.kind in "OUS":
        return "" if np.array_equal(expected, actual) else "values differ"
    if expected.dtype != actual.dtype and not (expected.dtype.kind == actual.dtype.kind == "f"):
        return f"dtype {actual.dtype} != expected {expected.dtype}"
    try:
        np.testing.assert_allclose(actual.astype(np.float64) if actual.dtype.kind in "fc" or actual.dtype.itemsize < 8 else actual,
                                   expected.astype(np.float64) if expected.dtype.kind in "fc" or expected.dtype.itemsize < 8 else expected,
                                   rtol=rtol, atol=atol, equal_nan=True)
    except (AssertionError, TypeError) as e:
        lines = [line.strip() for line in str(e).splitlines() if "Max absolute" in line or "Mismatched" in line]
        return "; ".join(lines) or "values differ"
    return ""


def _session(proto):
    import onnxruntime as ort  # noqa: PLC0415

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.log_severity_level = 4
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _run_sets(proto, case) -> str:
    session = _session(proto)
    names = [i.name for i in session.get_inputs()]
    for inputs, outputs in case.data_sets:
        feeds = dict(zip(names, inputs))
        got = session.run(None, feeds)
        problem = _close(list(outputs), got[: len(outputs)], case.rtol, case.atol)
        if problem:
            return problem
    return ""


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"[:300]


def _rewrite(case, passes: str):
    """The case's model after ``passes`` (onnx_ir) and its new canonical ops, or the CaseResult that
    ends the case early (ORT fails on the original, or the pipeline raises)."""
    import graphopt  # noqa: PLC0415

    try:
        baseline = _run_sets(case.model, case)
    except Exception as e:  # ORT cannot run the case at all
        return CaseResult(case.name, "ort-fails", _one_line(e))
    if baseline:
        return CaseResult(case.name, "ort-fails", baseline)
    try:
        result = graphopt.compile(case.model, passes=passes, validate=False, targets=["onnx"])
    except Exception as e:
        return CaseResult(case.name, "error", _one_line(e))
    canonical = sorted(op for op in result.report.ops_after if op not in result.report.ops_before)
    return result.model, canonical


def run_case(case, passes: str) -> CaseResult:
    import onnx_ir as ir  # noqa: PLC0415

    rewritten = _rewrite(case, passes)
    if isinstance(rewritten, CaseResult):
        return rewritten
    model, canonical = rewritten
    try:
        proto = ir.to_proto(model)
        problem = _run_sets(proto, case)
    except Exception as e:
        return CaseResult(case.name, "fail", f"rewritten model does not run: {_one_line(e)}", canonical)
    return CaseResult(case.name, "fail" if problem else "pass", problem, canonical)


def _input_names(case) -> list[str]:
    """The graph inputs a data set feeds, in order (initializers listed as inputs take no data)."""
    initializers = {t.name for t in case.model.graph.initializer}
    return [i.name for i in case.model.graph.input if i.name not in initializers]


def refused_op(problem: str) -> str:
    """The op a preflight line names: ``tvm-llvm: Op (1 node) ...`` / ``tvm-llvm: Op: why`` -> ``Op``."""
    text = problem.split(": ", 1)[1] if problem.startswith("tvm-") else problem
    return re.split(r"[\s:(]", text, maxsplit=1)[0]


def run_tvm_case(case, passes: str, target: str = "tvm-llvm") -> CaseResult:
    """The case through the TVM backend: refused by the preflight, or compiled and compared per data set."""
    from graphopt.backends import tvm as tvm_backend  # noqa: PLC0415

    rewritten = _rewrite(case, passes)
    if isinstance(rewritten, CaseResult):
        return rewritten
    model, canonical = rewritten
    try:
        problems = tvm_backend.preflight(model, target)
    except Exception as e:  # a preflight that raises is a defect of its own
        return CaseResult(case.name, "error", f"preflight raised: {_one_line(e)}", canonical)
    if problems:
        return CaseResult(case.name, "refused", problems[0], canonical, refused_op=refused_op(problems[0]))
    names = _input_names(case)
    for inputs, outputs in case.data_sets:
        feeds = dict(zip(names, inputs))
        try:  # compiled per data set: shapes are static
            artifact = tvm_backend.compile(model, target=target, example_inputs=feeds, threads=1)
        except Exception as e:
            return CaseResult(case.name, "error", f"preflight accepted, compile failed: {_one_line(e)}", canonical)
        try:
            got = artifact.run(feeds)
        except Exception as e:
            return CaseResult(case.name, "fail", f"compiled model does not run: {_one_line(e)}", canonical)
        actual = [got[info.name] for info in artifact.outputs]
        problem = _close(list(outputs), actual[: len(outputs)], case.rtol, case.atol)
        if problem:
            return CaseResult(case.name, "fail", problem, canonical)
    return CaseResult(case.name, "pass", "", canonical)


def _worker(args):
    name, passes, pattern = args
    case = next(c for c in _CASES if c.name == name)
    return run_case(case, passes)


_CASES: list = []


def _init(pattern):
    global _CASES
    _CASES = _cases(pattern)


def _names(pattern):
    return [c.name for c in _CASES]


def run_suite(passes: str = "canonicalize", pattern: str | None = None, workers: int = 2, progress: bool = False) -> list[CaseResult]:
    """Run every case (matching ``pattern``) in fresh worker processes.

    Fresh processes matter twice: onnx's ``collect_testcases`` keeps a module-global list (a
    process that once asked for one op type gets only those cases ever after), and forking a
    process that already runs torch/ORT thread pools breaks ORT in the children.
    """
    context = multiprocessing.get_context("spawn")
    with context.Pool(max(workers, 1), initializer=_init, initargs=(pattern,), maxtasksperchild=200) as pool:
        names = pool.apply(_names, (pattern,))
        iterator = pool.imap(_worker, [(n, passes, pattern) for n in names], chunksize=8)
        if progress:
            from tqdm import tqdm  # noqa: PLC0415

            iterator = tqdm(iterator, total=len(names), desc="conformance", file=sys.stderr)
        return list(iterator)


def _serve(conn, pattern, passes, target):
    """A worker: answers the case list once, then one CaseResult per case name it is sent."""
    import os  # noqa: PLC0415

    os.environ.setdefault("TVM_NUM_THREADS", "1")  # one core per worker: the suite shares the machine
    _init(pattern)
    conn.send([c.name for c in _CASES])
    by_name = {c.name: c for c in _CASES}
    while True:
        name = conn.recv()
        if name is None:
            return
        conn.send(run_tvm_case(by_name[name], passes, target))


class _TvmWorker:
    """One worker process with a pipe; replaced by the suite when a case kills it or hangs."""

    def __init__(self, context, pattern, passes, target):
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child, pattern, passes, target), daemon=True)
        self.process.start()
        child.close()
        self.case: str | None = None
        self.started = 0.0

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.process.kill()
        else:
            try:
                self.conn.send(None)
            except OSError:
                pass
        self.process.join(10)
        self.conn.close()


def run_tvm_suite(passes: str = "canonicalize", pattern: str | None = None, workers: int = 1, target: str = "tvm-llvm",
                  timeout: float = 300.0, progress: bool = False) -> list[CaseResult]:
    """Every case (matching ``pattern``) through ``target``, in ``workers`` long-lived processes.

    A pool would hang on a worker that segfaults inside generated code; here a dead or hung worker
    fails its case and is replaced, and the suite goes on.
    """
    import time  # noqa: PLC0415
    from multiprocessing.connection import wait  # noqa: PLC0415

    context = multiprocessing.get_context("spawn")
    pool = [_TvmWorker(context, pattern, passes, target) for _ in range(max(workers, 1))]
    names = pool[0].conn.recv()
    for worker in pool[1:]:
        worker.conn.recv()
    pending = list(reversed(names))
    results: dict[str, CaseResult] = {}
    bar = None
    if progress:
        from tqdm import tqdm  # noqa: PLC0415

        bar = tqdm(total=len(names), desc=f"conformance {target}", file=sys.stderr)

    def finish(worker, result):
        results[result.name] = result
        worker.case = None
        if bar is not None:
            bar.update(1)

    def replace(worker):
        worker.stop(kill=True)
        fresh = _TvmWorker(context, pattern, passes, target)
        fresh.conn.recv()  # its case list
        pool[pool.index(worker)] = fresh
        return fresh

    while pending or any(w.case for w in pool):
        for worker in pool:
            if worker.case is None and pending:
                worker.case, worker.started = pending.pop(), time.monotonic()
                worker.conn.send(worker.case)
        busy = [w for w in pool if w.case]
        ready = wait([w.conn for w in busy], timeout=5.0)
        for worker in busy:
            if worker.conn in ready:
                try:
                    finish(worker, worker.conn.recv())
                except (EOFError, OSError):
                    worker.process.join(5)
                    finish(worker, CaseResult(worker.case, "fail", f"worker process died (exit code {worker.process.exitcode})"))
                    replace(worker)
            elif time.monotonic() - worker.started > timeout:
                finish(worker, CaseResult(worker.case, "fail", f"timed out after {timeout:.0f} s"))
                replace(worker)
    for worker in pool:
        worker.stop()
    if bar is not None:
        bar.close()
    return [results[n] for n in names]


def expanded_not_canonicalized(results: Sequence[CaseResult]) -> list[CaseResult]:
    """`*_expanded` cases of gelu/layer_norm/rms_norm/attention that kept no canonical op."""
    missed = []
    for r in results:
        if r.status != "pass" or "_expanded" not in r.name:
            continue
        for prefix, ops in EXPECTED_CANONICAL.items():
            if r.name.startswith(prefix + "_") and not any(c.startswith(op) or c == op for c in r.canonical for op in ops):
                missed.append(r)
    return missed


def summarize(results: Sequence[CaseResult]) -> dict:
    counts = collections.Counter(r.status for r in results)
    summary = {
        "cases": len(results),
        "ort_passes": len(results) - counts["ort-fails"],
        "pass": counts["pass"],
        "fail": counts["fail"] + counts["error"],
        "failures": [dataclasses.asdict(r) for r in results if r.status in ("fail", "error")],
        "expanded_not_canonicalized": [r.name for r in expanded_not_canonicalized(results)],
    }
    if counts["refused"]:
        summary["refused"] = counts["refused"]
        summary["compiled"] = summary["ort_passes"] - counts["refused"]
        summary["refused_by_op"] = dict(collections.Counter(r.refused_op for r in results if r.status == "refused").most_common())
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m graphopt.conformance", description=__doc__.splitlines()[0])
    parser.add_argument("--passes", default="canonicalize")
    parser.add_argument("--filter", help="regex on case names")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", help="write the full results here")
    parser.add_argument("--target", default="onnx", help="onnx (ONNX Runtime, the default) or a TVM target such as tvm-llvm")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per case before its TVM worker is replaced")
    args = parser.parse_args(argv)
    if args.target == "onnx":
        results = run_suite(args.passes, args.filter, args.workers, progress=sys.stderr.isatty())
    else:
        results = run_tvm_suite(args.passes, args.filter, args.workers, args.target, args.timeout, progress=sys.stderr.isatty())
    summary = summarize(results)
    if args.target == "onnx":
        print(f"{summary['cases']} cases; ORT passes {summary['ort_passes']}; after '{args.passes}': "
              f"{summary['pass']} pass, {summary['fail']} fail")
    else:
        print(f"{summary['cases']} cases; ORT passes {summary['ort_passes']}; after '{args.passes}' on {args.target}: "
              f"{summary.get('refused', 0)} refused by the preflight, {summary.get('compiled', summary['ort_passes'])} compiled: "
              f"{summary['pass']} pass, {summary['fail']} fail")
        for op, n in summary.get("refused_by_op", {}).items():
            print(f"  refused {op}: {n}")
    for failure in summary["failures"]:
        print(f"  FAIL {failure['name']}: {failure['reason']}")
    for name in summary["expanded_not_canonicalized"]:
        print(f"  NOT CANONICALIZED {name}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"summary": summary, "results": [dataclasses.asdict(r) for r in results]}, f, indent=1)
    return 1 if summary["fail"] or summary["expanded_not_canonicalized"] else 0


if __name__ == "__main__":
    sys.exit(main())
