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
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from graphopt import data, registry, storage
from graphopt.errors import CheckFailedError, UsageError
from graphopt.metrics import Tolerances
from graphopt.outdir import staged_output
from graphopt.pipeline import Pipeline, parse_pipeline
from graphopt.report import Report, render
from graphopt.report_html import write_html
from graphopt.stages import BENCH_RUNS, COMPILE_STAGES, Context, Phases, Settings, run_stages

_apply_input_shapes = data.apply_input_shapes  # graphopt.inspection's name for it

__all__ = ["CompileResult", "compile"]

logger = logging.getLogger(__name__)
INTEGER_ONLY_PRESET = "ivit"  # a pipeline naming it is verified integer-only unless told otherwise


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

    def print_report(self, console=None, *, verbose: bool = False) -> None:
        render(self.report, console, verbose=verbose)

    def save(self, outdir: str | os.PathLike, *, force: bool = False) -> list[str]:
        """Write model.onnx, report.json, report.html and per-target artifacts atomically into ``outdir``.

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
            write_html(os.path.join(staging, "report.html"), self.report)
            written = sorted(os.listdir(staging))
        return [os.path.join(os.fspath(outdir), name) for name in written]


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
    bench_runs: int = BENCH_RUNS,
    ort_optimization: str = "all",
    progress: Callable[[Iterable], Iterable] | None = None,
    name: str | None = None,
    tune_budget: int = 0,
    tune_database: str | None = None,
    phases: Phases | None = None,
    mask: str | None = "auto",
    eval: Any = None,  # noqa: A002 — the CLI's --eval
    outputs: Sequence[str] | None = None,
    ignore_outputs: Sequence[str] = (),
    profile: bool = False,
    budget: str | None = None,
    returns: str = "result",
) -> CompileResult | Any:
    """Rewrite ``model`` with ``passes``, validate against the original, build ``targets``.

    ``model`` is anything ``graphopt.load`` accepts. ``calib`` is calibration/validation data in
    any form ``graphopt.data.load_samples`` accepts; without it seeded synthetic inputs are used
    and the report warns. ``bench_runs > 0`` times the original and every target (median), both
    with ONNX Runtime graph optimization level ``ort_optimization`` (disable/basic/extended/all);
    the default, ``BENCH_RUNS`` (0, shared with the CLI), times nothing: latency is opt-in.
    ``integer_only`` runs the integer-only verifier (``graphopt.integer_region``) on the result:
    a float op between QuantizeLinear and DequantizeLinear, or no such region at all, is a
    violation like a numeric one (``result.ok`` False, ``check()`` raises ``CheckFailedError``).
    None means on when the pipeline names the ``ivit`` preset. ``tune_budget`` (MetaSchedule trials)
    and ``tune_database`` (records of an earlier run) apply to TVM host targets; see
    ``graphopt.backends.tvm.tune``. ``phases(name)`` is a context manager entered around each
    stage (``graphopt.stages``): the CLI shows the phases with their times. ``mask`` names the
    input whose zeros mark padding (``"auto"``: an ``attention_mask``-like input; None: none):
    accuracy metrics leave padded positions out. ``outputs`` / ``ignore_outputs`` choose which
    outputs the checks gate (all are measured and reported). ``eval`` is held-out data for the
    checks, parity and latency (any form ``calib`` takes; default: the calibration samples).
    Validation runs on a compiled target once it matched ORT bit for bit on the first samples.
    ``profile`` times every kernel of each TVM target that runs here (``report.data["profile"]``),
    with the schedule rule each one got; ``fallback_share`` is the time in kernels no fast rule took.
    ``budget`` (``"cosine=0.995"``, ``"sqnr=30"``, ``"top1=0.99"``) is a floor on the worst checked
    output: when the rewrite misses it, the rewrites to blame are found by bisection and rolled back
    (``graphopt.budget``; ``report.data["budget"]``), and a floor that cannot be kept is a violation.
    ``returns="torch"`` returns the rewritten model as a ``torch.fx.GraphModule`` (``graphopt.to_torch``)
    instead of the result, for training-aware export pipelines; the report is its ``meta["graphopt.report"]``
    (returned whatever the checks said: fine-tuning is what recovers accuracy).
    """
    if returns not in RETURNS:
        raise UsageError(f"returns={returns!r}: valid are {', '.join(map(repr, RETURNS))}")
    settings = checked_settings(passes, calib=calib, targets=targets, example_inputs=example_inputs, input_shapes=input_shapes,
                         validate=validate, validate_each=validate_each, integer_only=integer_only, tolerances=tolerances,
                         synthetic_samples=synthetic_samples, seed=seed, threads=threads, bench_runs=bench_runs,
                         ort_optimization=ort_optimization, progress=progress, tune_budget=tune_budget, tune_database=tune_database,
                         mask=mask, eval=eval, outputs=tuple(outputs) if outputs is not None else None, ignore_outputs=tuple(ignore_outputs),
                         profile=profile, budget=budget)
    from graphopt import backends  # noqa: PLC0415

    ctx = Context(model, settings, Report(model=name or describe_model(model), pipeline=str(settings.pipeline)),
                  {t: backends.get_backend(t) for t in settings.targets})
    run_stages(ctx, COMPILE_STAGES, phases)
    result = CompileResult(ctx.work, ctx.original, ctx.artifacts, ctx.report, ctx.samples,
                           input_files=_input_files(model, ctx.original, calib, eval))
    return _as_torch(result) if returns == "torch" else result


RETURNS = ("result", "torch")


def _as_torch(result: CompileResult):
    from graphopt.fx import to_torch  # noqa: PLC0415 — torch only for callers who ask for it

    module = to_torch(result.model)
    module.meta["graphopt.report"] = result.report
    return module


def checked_settings(passes, *, targets, input_shapes, integer_only, tolerances, ort_optimization, tune_budget, tune_database,
              **rest) -> Settings:
    """Every option checked before any work: a bad one is a UsageError (exit 2)."""
    pipeline = parse_pipeline(passes)
    pipeline.expand()  # unknown passes/options fail here
    targets = [targets] if isinstance(targets, str) else list(targets or ["onnx"])
    from graphopt import backends  # noqa: PLC0415
    from graphopt.backends.ort import OPTIMIZATION_LEVELS  # noqa: PLC0415

    for target in targets:
        backends.get_backend(target)  # unknown targets fail here
    if ort_optimization not in OPTIMIZATION_LEVELS:
        raise UsageError(f"unknown ORT optimization level '{ort_optimization}' (valid: {', '.join(OPTIMIZATION_LEVELS)})")
    if tune_budget < 0:
        raise UsageError(f"--tune-budget must be 0 or more trials, got {tune_budget}")
    if tune_database and not tune_budget and not os.path.isdir(tune_database):
        raise UsageError(f"--tune-database {tune_database} is not a folder (it is an earlier run's <target>/tuning)")
    if rest.get("profile") and not any(t.startswith("tvm") for t in targets):
        raise UsageError("--profile times the kernels of TVM code: add a TVM target, e.g. --targets onnx,tvm-llvm")
    if (tune_budget or tune_database) and not any(t != "onnx" for t in targets):
        raise UsageError("--tune-budget / --tune-database tune TVM code: add a TVM target, e.g. --targets tvm-llvm")
    if rest.get("budget") is not None:
        from graphopt.budget import parse_budget  # noqa: PLC0415

        rest["budget"] = parse_budget(rest["budget"])
        if not rest.get("validate", True):
            raise UsageError("--budget measures the rewritten model against the original: drop --no-validate")
    shapes = dict(input_shapes) if isinstance(input_shapes, Mapping) else data.parse_shape_overrides(input_shapes)
    return Settings(
        pipeline=pipeline, targets=tuple(targets), input_shapes={k: tuple(v) for k, v in shapes.items()},
        integer_only=_names_preset(pipeline, INTEGER_ONLY_PRESET) if integer_only is None else integer_only,
        tolerances=(tolerances or Tolerances()).resolved(_approximates(pipeline)), ort_optimization=ort_optimization, tune_budget=tune_budget,
        tune_database=tune_database, **rest,
    )


def _input_files(source: Any, loaded: ir.Model, *data_sources: Any) -> tuple[str, ...]:
    """The files a run read: the model, its external data and path-like calibration/evaluation data."""
    files = [os.fspath(source)] if isinstance(source, (str, os.PathLike)) else []
    files += [v.const_value.path for g in loaded.graphs() for v in g.initializers.values() if isinstance(v.const_value, ir.ExternalTensor)]
    for data_source in data_sources:
        items = [data_source] if isinstance(data_source, (str, os.PathLike)) else data_source if isinstance(data_source, (list, tuple)) else []
        for item in items:
            if isinstance(item, (str, os.PathLike)):
                path = os.fspath(item)
                files.append(path if os.path.exists(path) else path.partition(":")[2])  # name:file.npy
    return tuple(dict.fromkeys(files))


def _approximates(pipeline: Pipeline) -> bool:
    """Whether a pass of the pipeline changes the numbers by design (category "rewrite")."""
    return any(spec.category == "rewrite" for spec, _ in pipeline.expand())


def _names_preset(pipeline: Pipeline, name: str) -> bool:
    """Whether ``pipeline`` names the preset ``name``, directly or inside another preset."""
    for step in pipeline.steps:
        if step.name == name:
            return True
        entry = registry.get_pass(step.name)
        if isinstance(entry, registry.Preset) and _names_preset(parse_pipeline(entry.pipeline), name):
            return True
    return False


def describe_model(model: Any) -> str:
    if isinstance(model, (str, os.PathLike)):
        return os.fspath(model)
    return type(model).__name__
