"""The Python API: ``graphopt.compile(model, passes=..., calib=..., targets=...)``.

    result = graphopt.compile(module, example_inputs=(ids, mask), passes="canonicalize")
    result.model                      # the rewritten onnx_ir.Model
    result.artifacts["onnx"].run(feeds)
    result.report.accuracy            # metrics vs the original, per output
    result.save("out/")               # what `graphopt compile -o out/` writes

The CLI is a thin layer over this function, so both behave the same.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from graphopt import capture, data, integer_region, interface, ops, registry, storage
from graphopt.outdir import staged_output
from graphopt.errors import CheckFailedError, InternalError, ModelError, UnsupportedError, UsageError
from graphopt.metrics import Tolerances, compare_outputs
from graphopt.pipeline import Pipeline, parse_pipeline, run_pipeline
from graphopt.report import Report, model_summary, op_histogram, render

__all__ = ["CompileResult", "compile"]

logger = logging.getLogger(__name__)
INTEGER_ONLY_PRESET = "ivit"  # a pipeline naming it is verified integer-only unless told otherwise
SYNTHETIC_WARNING = "no calibration data given: using synthetic random inputs, so accuracy numbers say little about real data (pass --calib)"
PARITY_SAMPLES = 2  # samples each compiled target runs for the parity check (qemu runs are slow)


@dataclasses.dataclass
class CompileResult:
    model: ir.Model
    original: ir.Model
    artifacts: dict[str, Any]
    report: Report
    samples: list[dict[str, np.ndarray]]
    input_files: tuple[str, ...] = ()  # what the run read (model, its external data, data files): never written over

    @property
    def ok(self) -> bool:
        return self.report.ok

    def check(self) -> CompileResult:
        """Raise CheckFailedError when the numerics exceeded the tolerances."""
        if not self.report.ok:
            raise CheckFailedError("; ".join(self.report.violations))
        return self

    def print_report(self, console=None) -> None:
        render(self.report, console)

    def save(self, outdir: str | os.PathLike, *, force: bool = False) -> list[str]:
        """Write model.onnx, report.json and per-target artifacts atomically into ``outdir``.

        Files there that this run read, or that graphopt did not write, are not replaced unless
        ``force`` (a UsageError says so); see ``graphopt.outdir``.
        """
        with staged_output(outdir, inputs=self.input_files, force=force) as staging:
            for target, artifact in self.artifacts.items():
                folder = staging if target == "onnx" else os.path.join(staging, artifact.target)  # JSON targets: tvm-<hash>
                os.makedirs(folder, exist_ok=True)
                artifact.save(folder)
            if "onnx" not in self.artifacts:
                storage.save_model(self.model, os.path.join(staging, "model.onnx"))
            storage.atomic_write_text(os.path.join(staging, "report.json"), self.report.to_json())
            written = sorted(os.listdir(staging))
        return [os.path.join(os.fspath(outdir), name) for name in written]


def _apply_input_shapes(model: ir.Model, shapes: Mapping[str, Sequence[int]]) -> None:
    inputs = {v.name: v for v in model.graph.inputs}
    for name, dims in shapes.items():
        if name not in inputs:
            raise UsageError(f"--input-shape names '{name}', but the model's inputs are {sorted(inputs)}")
        value = inputs[name]
        if value.shape is not None and len(value.shape) != len(dims):
            raise UsageError(f"--input-shape {name}: rank {len(dims)} given, the model's input has rank {len(value.shape)}")
        value.shape = ir.Shape(list(dims))


def _run_all(model: ir.Model, samples: Sequence[Mapping[str, np.ndarray]], threads: int) -> list[dict[str, np.ndarray]]:
    from graphopt.backends import ort  # noqa: PLC0415

    session = ort.make_session(model, optimization="disable", threads=threads)
    return [ort.run(session, s) for s in samples]


def _run_rewritten(model: ir.Model, samples, threads: int) -> list[dict[str, np.ndarray]]:
    """``_run_all`` on a model graphopt wrote: ORT refusing it is graphopt's bug (exit 5), never
    the user's bad model (exit 3); the model is kept for the bug report."""
    try:
        return _run_all(model, samples, threads)
    except ModelError as e:
        raise InternalError(f"{e} — the model graphopt produced; this is a graphopt bug: {_keep_for_report(model)}") from e


def _keep_for_report(model: ir.Model) -> str:
    folder = tempfile.mkdtemp(prefix="graphopt-rejected-")
    try:
        storage.save_model(model, os.path.join(folder, "model.onnx"))
    except Exception as e:  # noqa: BLE001 — the message matters more than the copy
        return f"it could not be kept ({type(e).__name__})"
    return f"the rewritten model is kept at {folder}/model.onnx for a report"


def _measure_latency(report: Report, original: ir.Model, artifacts: dict, feeds, *, runs: int, optimization: str, threads: int) -> None:
    """Median latency of the original (ORT) and of every target, best-effort: a runtime that cannot
    load or run a model here is a warning in the report, and every output is still written."""
    from graphopt.backends import ort  # noqa: PLC0415

    runners = {"original": lambda: ort.time_session(ort.make_session(original, optimization=optimization, threads=threads), feeds,
                                                    runs=runs, threads=threads)}
    for target, artifact in artifacts.items():
        if not getattr(artifact, "can_time", True):  # cross builds (qemu) and GPU code without a GPU
            report.warnings.append(f"no latency for {target}: its code does not run natively on this machine")
            continue
        runners[target] = lambda artifact=artifact: artifact.time(feeds, runs=runs)
    for name, measure in runners.items():
        try:
            report.latency[name] = measure().as_dict()
        except Exception as e:  # noqa: BLE001 — latency is a measurement, not a verdict
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            report.warnings.append(f"no latency for {name} (ORT optimization {optimization}): {first}")
            logger.warning("latency of %s failed: %s", name, first)


def compile(  # noqa: A001 — mirrors the CLI command name
    model: Any,
    passes: str | Sequence[str] = "canonicalize",
    *,
    calib: Any = None,
    targets: Sequence[str] | str | None = None,
    example_inputs: Any = None,
    input_shapes: Mapping[str, Sequence[int]] | Sequence[str] | None = None,
    validate: bool = True,
    validate_each: bool = False,
    integer_only: bool | None = None,
    tolerances: Tolerances | None = None,
    synthetic_samples: int = 4,
    seed: int = 0,
    threads: int = 2,
    bench_runs: int = 0,
    ort_optimization: str = "all",
    progress: Callable[[Iterable], Iterable] | None = None,
    name: str | None = None,
    tune_budget: int = 0,
    tune_database: str | None = None,
) -> CompileResult:
    """Rewrite ``model`` with ``passes``, validate against the original, build ``targets``.

    ``model`` is anything ``graphopt.load`` accepts. ``calib`` is calibration/validation data in
    any form ``graphopt.data.load_samples`` accepts; without it seeded synthetic inputs are used
    and the report warns. ``bench_runs > 0`` times the original and every target (median), both
    with ONNX Runtime graph optimization level ``ort_optimization`` (disable/basic/extended/all).
    ``integer_only`` runs the integer-only verifier (``graphopt.integer_region``) on the result:
    a float op between QuantizeLinear and DequantizeLinear, or no such region at all, is a
    violation like a numeric one (``result.ok`` False, ``check()`` raises ``CheckFailedError``).
    None means on when the pipeline names the ``ivit`` preset. ``tune_budget`` (MetaSchedule trials)
    and ``tune_database`` (records of an earlier run) apply to TVM host targets; see
    ``graphopt.backends.tvm.tune``.
    """
    timings: dict[str, float] = {}
    start = time.perf_counter()
    pipeline = parse_pipeline(passes)
    pipeline.expand()  # fail on unknown passes/options before any work
    if integer_only is None:
        integer_only = _names_preset(pipeline, INTEGER_ONLY_PRESET)
    targets = [targets] if isinstance(targets, str) else list(targets or ["onnx"])
    from graphopt import backends  # noqa: PLC0415

    backend_modules = {t: backends.get_backend(t) for t in targets}
    from graphopt.backends.ort import OPTIMIZATION_LEVELS  # noqa: PLC0415

    if ort_optimization not in OPTIMIZATION_LEVELS:
        raise UsageError(f"unknown ORT optimization level '{ort_optimization}' (valid: {', '.join(OPTIMIZATION_LEVELS)})")
    if tune_budget < 0:
        raise UsageError(f"--tune-budget must be 0 or more trials, got {tune_budget}")
    if tune_database and not tune_budget and not os.path.isdir(tune_database):
        raise UsageError(f"--tune-database {tune_database} is not a folder (it is an earlier run's <target>/tuning)")
    if (tune_budget or tune_database) and not any(t != "onnx" for t in targets):
        raise UsageError("--tune-budget / --tune-database tune TVM code: add a TVM target, e.g. --targets tvm-llvm")
    tolerances = tolerances or Tolerances()
    original = capture.load(model, example_inputs)
    if input_shapes:
        shapes = data.parse_shape_overrides(input_shapes) if not isinstance(input_shapes, Mapping) else dict(input_shapes)
        _apply_input_shapes(original, shapes)
    timings["load"] = time.perf_counter() - start

    report = Report(model=name or _describe(model), pipeline=str(pipeline))
    if calib is not None:
        samples = data.load_samples(calib, original)
        report.data = {"kind": "user", "samples": len(samples)}
    else:
        shapes = data.parse_shape_overrides(input_shapes) if input_shapes and not isinstance(input_shapes, Mapping) else dict(input_shapes or {})
        samples = [data.synthetic_inputs(original, seed + i, shapes) for i in range(synthetic_samples)] if validate or bench_runs else []
        report.data = {"kind": "synthetic", "samples": len(samples), "seed": seed}
        if validate:
            report.warnings.append(SYNTHETIC_WARNING)
            logger.warning(SYNTHETIC_WARNING)

    work = original.clone()
    reference = _run_all(original, samples, threads) if validate and samples else []

    def check_after(pass_name: str, m: ir.Model) -> None:
        metrics = compare_outputs(reference, _run_rewritten(m.clone(), samples, threads))
        report.accuracy_per_pass[pass_name] = {k: v.as_dict() for k, v in metrics.items()}

    t = time.perf_counter()
    records = run_pipeline(
        work, pipeline, after_each=check_after if (validate_each and reference) else None, progress=progress, samples=samples
    )
    ops.attach_functions(work)
    common_passes.NameFixPass()(work)
    interface.restore_interface(original, work)
    common_passes.RemoveUnusedNodesPass()(work)  # e.g. the Identity onnx_ir added for an input returned as output
    timings["pipeline"] = time.perf_counter() - t

    report.passes = [dataclasses.asdict(r) for r in records]
    report.before, report.after = model_summary(original), model_summary(work)
    report.ops_before, report.ops_after = op_histogram(original), op_histogram(work)

    problems = [p for t_name, mod in backend_modules.items() for p in mod.preflight(work, t_name)]
    if problems:
        raise UnsupportedError(f"{len(problems)} unsupported op(s) for {', '.join(targets)}: " + "; ".join(problems[:5]))

    rewritten = []
    if reference:
        t = time.perf_counter()
        rewritten = _run_rewritten(work, samples, threads)
        metrics = compare_outputs(reference, rewritten)
        report.accuracy = {k: v.as_dict() for k, v in metrics.items()}
        report.tolerances = dataclasses.asdict(tolerances)
        report.violations = [v for k, m in metrics.items() for v in tolerances.violations(k, m)]
        timings["validate"] = time.perf_counter() - t

    if reference:
        t = time.perf_counter()
        from graphopt.layer_error import layer_errors  # noqa: PLC0415

        report.layers = [e.as_dict() for e in layer_errors(original, work, samples, threads=threads)]
        timings["layer_error"] = time.perf_counter() - t

    if integer_only:
        t = time.perf_counter()
        verdict = integer_region.verify(work)
        report.integer_only = verdict.as_dict()
        if not verdict.ok:
            report.violations.append(verdict.summary())
        timings["integer_only"] = time.perf_counter() - t

    artifacts = {}
    for target, module in backend_modules.items():
        t = time.perf_counter()
        artifacts[target] = module.compile(
            work, target=target, threads=threads, optimization=ort_optimization, example_inputs=samples[0] if samples else None,
            tune_budget=tune_budget, tune_database=tune_database, progress=progress is not None,
        )
        report.targets[target] = {"compile_seconds": time.perf_counter() - t, "folder": artifacts[target].target}
        report.targets[target].update(getattr(artifacts[target], "details", {}))

    if reference:
        t = time.perf_counter()
        target_outputs = {}
        for target, artifact in artifacts.items():
            if target != "onnx":
                report.parity[target], target_outputs[target] = _parity(
                    artifact, samples[:PARITY_SAMPLES], reference, rewritten, tolerances, report
                )
        _pairwise_parity(report.parity, target_outputs)
        timings["parity"] = time.perf_counter() - t

    if bench_runs > 0 and samples:
        t = time.perf_counter()
        _measure_latency(report, original, artifacts, samples[0], runs=bench_runs, optimization=ort_optimization, threads=threads)
        timings["latency"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - start
    report.seconds = timings
    return CompileResult(work, original, artifacts, report, samples, input_files=_input_files(model, original, calib))


def _parity(artifact, samples, reference, rewritten, tolerances: Tolerances, report: Report) -> tuple[dict, list | None]:
    """``artifact``'s outputs on ``samples`` vs the original model and vs ONNX Runtime running the
    rewritten model (an integer graph must match the latter bit for bit), and the outputs themselves
    (None when the target cannot run here, e.g. a GPU target on a machine without one: noted, not failed)."""
    try:
        outputs = [artifact.run(s) for s in samples]
    except UnsupportedError as e:
        return {"ran": False, "note": str(e)}, None
    onnx_outputs = rewritten[: len(samples)]
    vs_onnx = compare_outputs(onnx_outputs, outputs)
    bit_exact = all(np.array_equal(o[k], a[k]) for o, a in zip(onnx_outputs, outputs) for k in o)
    for name, m in vs_onnx.items():
        report.violations.extend(f"{artifact.target} vs onnx: {v}" for v in tolerances.violations(name, m))
    return {
        "ran": True,
        "samples": len(samples),
        "bit_exact_vs_onnx": bit_exact,
        "vs_onnx": {k: v.as_dict() for k, v in vs_onnx.items()},
        "vs_original": {k: v.as_dict() for k, v in compare_outputs(reference[: len(samples)], outputs).items()},
    }, outputs


def _pairwise_parity(parity: dict, outputs: dict[str, list | None]) -> None:
    """Every two targets that ran, compared with each other: ``parity[a]["vs_targets"][b]`` holds
    whether they agree bit for bit and their largest absolute difference over all outputs."""
    ran = [target for target, got in outputs.items() if got is not None]
    for a in ran:
        parity[a]["vs_targets"] = {}
        for b in ran:
            if a == b:
                continue
            metrics = compare_outputs(outputs[b], outputs[a])
            parity[a]["vs_targets"][b] = {
                "bit_exact": all(np.array_equal(x[k], y[k]) for x, y in zip(outputs[a], outputs[b]) for k in x),
                "max_abs": max((m.max_abs for m in metrics.values()), default=0.0),
            }


def _input_files(source: Any, loaded: ir.Model, calib: Any) -> tuple[str, ...]:
    """The files a run read: the model, its external data and path-like calibration data."""
    files = [os.fspath(source)] if isinstance(source, (str, os.PathLike)) else []
    files += [v.const_value.path for g in loaded.graphs() for v in g.initializers.values() if isinstance(v.const_value, ir.ExternalTensor)]
    for item in [calib] if isinstance(calib, (str, os.PathLike)) else calib if isinstance(calib, (list, tuple)) else []:
        if isinstance(item, (str, os.PathLike)):
            path = os.fspath(item)
            files.append(path if os.path.exists(path) else path.partition(":")[2])  # name:file.npy
    return tuple(dict.fromkeys(files))


def _names_preset(pipeline: Pipeline, name: str) -> bool:
    """Whether ``pipeline`` names the preset ``name``, directly or inside another preset."""
    for step in pipeline.steps:
        if step.name == name:
            return True
        entry = registry.get_pass(step.name)
        if isinstance(entry, registry.Preset) and _names_preset(parse_pipeline(entry.pipeline), name):
            return True
    return False


def _describe(model: Any) -> str:
    if isinstance(model, (str, os.PathLike)):
        return os.fspath(model)
    return type(model).__name__
