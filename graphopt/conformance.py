"""Conformance: the ONNX backend node test cases, run before and after a pipeline.

Every case onnxruntime passes on its own must still pass after the pipeline (run in-process
through ``graphopt.compile``), with the case's expected outputs and tolerances. The `onnx`
wheel ships the case generators, not the files: ``collect_testcases()`` builds ~1,900 cases
(model, input/output data sets, rtol/atol) in seconds.

    python -m graphopt.conformance --passes canonicalize [--filter gelu] [--json out.json]
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
    status: str  # "pass", "fail", "ort-fails" (baseline fails: not counted), "error"
    reason: str = ""
    canonical: list[str] = dataclasses.field(default_factory=list)


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


def run_case(case, passes: str) -> CaseResult:
    import onnx_ir as ir  # noqa: PLC0415

    import graphopt  # noqa: PLC0415

    try:
        baseline = _run_sets(case.model, case)
    except Exception as e:  # ORT cannot run the case at all
        return CaseResult(case.name, "ort-fails", _one_line(e))
    if baseline:
        return CaseResult(case.name, "ort-fails", baseline)
    try:
        result = graphopt.compile(case.model, passes=passes, validate=False, targets=["onnx"])
        proto = ir.to_proto(result.model)
    except Exception as e:
        return CaseResult(case.name, "error", _one_line(e))
    canonical = sorted(op for op in result.report.ops_after if op not in result.report.ops_before)
    try:
        problem = _run_sets(proto, case)
    except Exception as e:
        return CaseResult(case.name, "fail", f"rewritten model does not run: {_one_line(e)}", canonical)
    return CaseResult(case.name, "fail" if problem else "pass", problem, canonical)


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
    return {
        "cases": len(results),
        "ort_passes": len(results) - counts["ort-fails"],
        "pass": counts["pass"],
        "fail": counts["fail"] + counts["error"],
        "failures": [dataclasses.asdict(r) for r in results if r.status in ("fail", "error")],
        "expanded_not_canonicalized": [r.name for r in expanded_not_canonicalized(results)],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m graphopt.conformance", description=__doc__.splitlines()[0])
    parser.add_argument("--passes", default="canonicalize")
    parser.add_argument("--filter", help="regex on case names")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", help="write the full results here")
    args = parser.parse_args(argv)
    results = run_suite(args.passes, args.filter, args.workers, progress=sys.stderr.isatty())
    summary = summarize(results)
    print(f"{summary['cases']} cases; ORT passes {summary['ort_passes']}; after '{args.passes}': "
          f"{summary['pass']} pass, {summary['fail']} fail")
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
