"""Compile as named stages over one context: load, samples, reference, rewrite, budget,
integer-only, build, parity, validate, layer-error, sparsity, latency, profile.

Each stage reads what earlier stages left in the ``Context`` and fills its own part of the
report; ``run_stages`` times every stage with one instrument (``report.seconds[stage]``) and
announces it through a ``phases`` callback (the CLI shows each phase by name with its time).
``graphopt.compile`` runs ``COMPILE_STAGES``; other commands run the stages they need.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ContextManager

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from graphopt import capture, data, integer_region, interface, ops, storage
from graphopt.errors import InternalError, ModelError, UnsupportedError, UsageError
from graphopt.parity import pairwise_parity, target_parity
from graphopt.metrics import Tolerances, apply_mask, compare_outputs, detect_mask_input
from graphopt.pipeline import Pipeline, run_pipeline
from graphopt.report import Report, model_summary, op_histogram

__all__ = ["COMPILE_STAGES", "Context", "Settings", "Stage", "run_stages"]

logger = logging.getLogger(__name__)
SYNTHETIC_WARNING = "no calibration data given: using synthetic random inputs, so accuracy numbers say little about real data (pass --calib)"
# Timed runs per model when the caller names none, for graphopt.compile and `graphopt compile` alike:
# none. Latency is best-effort and noisy, and an export script that calls compile() should not pay
# seconds (minutes with TVM targets) for numbers it did not ask for; ask with bench_runs=10 /
# --bench-runs 10.
BENCH_RUNS = 0
PARITY_SAMPLES = 2  # samples each compiled target runs for the parity check (qemu runs are slow)


@dataclasses.dataclass(frozen=True)
class Settings:
    """What a compile was asked to do, checked once before any work (``api.compile``)."""

    pipeline: Pipeline
    targets: tuple[str, ...]
    calib: Any = None
    example_inputs: Any = None
    input_shapes: Mapping[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)
    validate: bool = True
    validate_each: bool = False
    integer_only: bool = False
    tolerances: Tolerances = Tolerances()
    synthetic_samples: int = 4
    seed: int = 0
    threads: int = 2
    bench_runs: int = BENCH_RUNS
    ort_optimization: str = "all"
    progress: Callable[[Iterable], Iterable] | None = None
    tune_budget: int = 0
    tune_database: str | None = None
    eval: Any = None  # held-out data for the checks (default: the calibration samples)
    mask: str | None = "auto"  # input marking real tokens: metrics skip padding; "auto" detects attention_mask
    outputs: tuple[str, ...] | None = None  # outputs the checks gate (None: all)
    ignore_outputs: tuple[str, ...] = ()  # outputs measured and reported but not checked
    profile: bool = False  # per-kernel times of every TVM target that runs here
    budget: Any = None  # graphopt.budget.Budget: a floor kept by rolling back the rewrites that break it


@dataclasses.dataclass
class Context:
    """The run's state: each stage reads what earlier stages left and adds its own."""

    source: Any
    settings: Settings
    report: Report
    backends: dict[str, Any]
    original: ir.Model | None = None
    work: ir.Model | None = None
    samples: list[dict[str, np.ndarray]] = dataclasses.field(default_factory=list)  # calibration (what passes see)
    eval_samples: list[dict[str, np.ndarray]] = dataclasses.field(default_factory=list)  # what the checks and timings run
    reference: list[dict[str, np.ndarray]] = dataclasses.field(default_factory=list)  # the original's outputs
    rewritten: list[dict[str, np.ndarray]] = dataclasses.field(default_factory=list)  # ORT on the rewritten model
    interface_change: dict | None = None  # what a pass declaring changes_interface changed (graphopt.interface)
    artifacts: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[Context], None]
    when: Callable[[Context], bool] = lambda ctx: True


Phases = Callable[[str], ContextManager]


def run_stages(ctx: Context, stages: Sequence[Stage], phases: Phases | None = None) -> None:
    """Run the stages that apply, each timed into ``report.seconds`` and shown through ``phases``;
    ``seconds["total"]`` adds up over calls (a command may run the stages in parts)."""
    phases = phases or (lambda name: contextlib.nullcontext())
    start = time.perf_counter()
    for stage in stages:
        if not stage.when(ctx):
            continue
        began = time.perf_counter()
        with phases(stage.name):
            stage.run(ctx)
        ctx.report.seconds[stage.name] = time.perf_counter() - began
    ctx.report.seconds["total"] = ctx.report.seconds.get("total", 0.0) + time.perf_counter() - start


def run_on_ort(model: ir.Model, samples: Sequence[Mapping[str, np.ndarray]], threads: int) -> list[dict[str, np.ndarray]]:
    """Outputs of ``model`` on each sample: ONNX Runtime with its graph optimizations off."""
    from graphopt.backends import ort  # noqa: PLC0415

    session = ort.make_session(model, optimization="disable", threads=threads)
    outputs = []
    for index, sample in enumerate(samples):
        try:
            outputs.append(ort.run(session, sample))
        except ort.RUN_ERRORS as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelError(f"ONNX Runtime cannot run the model on sample {index}: {first} "
                             "(check the data's shapes against the model, or fix the model)") from e
    return outputs


def run_rewritten(model: ir.Model, samples, threads: int) -> list[dict[str, np.ndarray]]:
    """``run_on_ort`` on a model graphopt wrote: ORT refusing it is graphopt's bug (exit 5), never
    the user's bad model (exit 3); the model is kept for the bug report."""
    try:
        return run_on_ort(model, samples, threads)
    except ModelError as e:
        raise InternalError(f"{e} — the model graphopt produced; this is a graphopt bug: {keep_for_report(model)}") from e


def keep_for_report(model: ir.Model) -> str:
    folder = tempfile.mkdtemp(prefix="graphopt-rejected-")
    try:
        storage.save_model(model, os.path.join(folder, "model.onnx"))
    except Exception as e:  # noqa: BLE001 — the message matters more than the copy
        return f"it could not be kept ({type(e).__name__})"
    return f"the rewritten model is kept at {folder}/model.onnx for a report"


LATENCY_ROUNDS = 3  # timed runs are split into rounds alternating between runners: a machine's drift hits all alike


def measure_latency(report: Report, original: ir.Model, artifacts: dict, feeds, *, runs: int, optimization: str, threads: int) -> None:
    """Median latency of the original (ORT) and of every target, timed in interleaved rounds;
    best-effort: a runtime that cannot load or run a model here is a warning in the report, and
    every output is still written."""
    from graphopt.backends import ort  # noqa: PLC0415

    session = functools.cache(lambda: ort.make_session(original, optimization=optimization, threads=threads))
    runners = {"original": lambda n: ort.time_session(session(), feeds, runs=n, threads=threads)}
    for target, artifact in artifacts.items():
        if not artifact.can_time:  # cross builds (qemu) and GPU code without a GPU
            report.warnings.append(f"no latency for {target}: its code does not run natively on this machine")
            continue
        runners[target] = lambda n, artifact=artifact: artifact.time(feeds, runs=n)
    rounds = max(1, min(LATENCY_ROUNDS, runs))
    timings: dict[str, list] = {name: [] for name in runners}
    for _ in range(rounds):
        for name in [n for n in runners if timings[n] is not None]:
            try:
                timings[name].append(runners[name](-(-runs // rounds)))
            except Exception as e:  # noqa: BLE001 — latency is a measurement, not a verdict
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                report.warnings.append(f"no latency for {name} (ORT optimization {optimization}): {first}")
                logger.warning("latency of %s failed: %s", name, first)
                timings[name] = None
    report.latency.update({name: _merged(parts) for name, parts in timings.items() if parts})


def _merged(parts: list) -> dict:
    """One runner's rounds as one timing: the median of the round medians, the widest p10-p90, and
    each round's median (``rounds_ms``: paired with the other runners' rounds, ratios cancel drift)."""
    return {"median_ms": statistics.median(t.median_ms for t in parts), "p10_ms": min(t.p10_ms for t in parts),
            "p90_ms": max(t.p90_ms for t in parts), "runs": sum(t.runs for t in parts), "threads": parts[0].threads,
            "rounds_ms": [t.median_ms for t in parts]}


def _load(ctx: Context) -> None:
    ctx.original = capture.load(ctx.source, ctx.settings.example_inputs)
    data.apply_input_shapes(ctx.original, ctx.settings.input_shapes)
    _check_output_and_mask_names(ctx)


def _check_output_and_mask_names(ctx: Context) -> None:
    s = ctx.settings
    outputs = [v.name for v in ctx.original.graph.outputs]
    for name in (*(s.outputs or ()), *s.ignore_outputs):
        if name not in outputs:
            raise UsageError(f"--outputs/--ignore-output name '{name}', but the model's outputs are {outputs}")
    inputs = [v.name for v in ctx.original.graph.inputs]
    if s.mask not in (None, "auto") and s.mask not in inputs:
        raise UsageError(f"--mask names '{s.mask}', but the model's inputs are {inputs} (or --mask none)")


def mask_input(ctx: Context) -> str | None:
    """The input whose zeros mark padding, as asked (``--mask``) or detected (``attention_mask``)."""
    if ctx.settings.mask != "auto":
        return ctx.settings.mask
    ranks = {v.name: (v.dtype.numpy() if v.dtype is not None else np.float32, len(v.shape) if v.shape is not None else None)
             for v in ctx.original.graph.inputs}
    return detect_mask_input(ranks)


def _samples(ctx: Context) -> None:
    s, report = ctx.settings, ctx.report
    if s.calib is not None:
        ctx.samples = data.load_samples(s.calib, ctx.original)
        report.data = {"kind": "user", "samples": len(ctx.samples)}
    else:
        if s.validate or s.bench_runs:
            ctx.samples = [data.synthetic_inputs(ctx.original, s.seed + i, s.input_shapes) for i in range(s.synthetic_samples)]
        report.data = {"kind": "synthetic", "samples": len(ctx.samples), "seed": s.seed}
    ctx.eval_samples = ctx.samples
    if s.eval is not None:
        ctx.eval_samples = data.load_samples(s.eval, ctx.original, where="evaluation data")
        report.data["eval_samples"] = len(ctx.eval_samples)
    if ctx.eval_samples:  # what TVM compiles for and latency times: the first sample's shapes
        report.data["shapes"] = {name: list(np.shape(array)) for name, array in ctx.eval_samples[0].items()}
    if s.calib is None and s.validate:
        report.warnings.append(SYNTHETIC_WARNING)
        logger.warning(SYNTHETIC_WARNING)


def _preflight_original(ctx: Context) -> None:
    """The original runs in ONNX Runtime (reference outputs, baseline latency): ops it cannot run
    are the backend's limit (exit 4, named), not a bad model."""
    from graphopt.backends import ort  # noqa: PLC0415

    problems = ort.preflight(ctx.original.clone())
    if problems:
        raise UnsupportedError(f"ONNX Runtime cannot run the original model: {'; '.join(problems[:5])} (use --no-validate --bench-runs 0 to rewrite without running it)")


def _reference(ctx: Context) -> None:
    ctx.reference = run_on_ort(ctx.original, ctx.eval_samples, ctx.settings.threads)


def _rewrite(ctx: Context) -> None:
    s, report = ctx.settings, ctx.report
    ctx.work = work = ctx.original.clone()

    watch = interface.InterfaceWatch(ctx.original)

    def check_after(pass_name: str, m: ir.Model) -> None:
        inputs, outputs = interface.interface_names(m)
        if inputs != [v.name for v in ctx.original.graph.inputs]:  # an interface pass changed what the model is fed
            return
        reference = [{k: v for k, v in r.items() if k in outputs} for r in ctx.reference]
        metrics = compare_outputs(reference, run_rewritten(m.clone(), ctx.eval_samples, s.threads))
        report.accuracy_per_pass[pass_name] = {k: v.as_dict() for k, v in metrics.items()}

    def after_each(pass_name: str, m: ir.Model) -> None:
        watch(pass_name, m)
        if s.validate_each and ctx.reference:
            check_after(pass_name, m)

    records = run_pipeline(work, s.pipeline, after_each=after_each, progress=s.progress, samples=ctx.samples)
    ops.attach_functions(work)
    common_passes.NameFixPass()(work)
    ctx.interface_change = watch.change(work)
    if ctx.interface_change is None:
        interface.restore_interface(ctx.original, work)
    else:
        _note_interface_change(ctx)
    common_passes.RemoveUnusedNodesPass()(work)  # e.g. the Identity onnx_ir added for an input returned as output
    _stamp_producer(work, ctx.original)
    report.passes = list(records)
    report.before, report.after = model_summary(ctx.original), model_summary(work)
    report.ops_before, report.ops_after = op_histogram(ctx.original), op_histogram(work)
    problems = [p for target, backend in ctx.backends.items() for p in backend.preflight(work, target)]
    if problems:
        raise UnsupportedError(f"{len(problems)} unsupported op(s) for {', '.join(ctx.backends)}: " + "; ".join(problems[:5]))


def _note_interface_change(ctx: Context) -> None:
    """A pass that declares ``changes_interface`` changed the inputs or outputs: the report lists the
    change, and the checks compare what still can be compared (the kept outputs, on unchanged inputs)."""
    change, report = ctx.interface_change, ctx.report
    by = ", ".join(change["changed_by"])
    if change["inputs_removed"] or change["inputs_added"]:
        change["compared"] = "none: the inputs changed, so the original's samples do not feed the rewritten model"
        report.data.pop("shapes", None)  # nothing was compiled for or timed on the original's sample shapes
        warning = (f"interface changed by {by}: inputs changed, outputs not compared (no validation, layer errors or "
                   "latency); see docs/linear-attention.md")
    else:
        kept = set(interface.interface_names(ctx.work)[1])
        ctx.reference = [{k: v for k, v in r.items() if k in kept} for r in ctx.reference]
        change["compared"] = "the outputs kept, on the same inputs"
        parts = [f"outputs {change['outputs_removed']} removed (not compared)"] if change["outputs_removed"] else []
        parts += [f"outputs {change['outputs_added']} added (no reference to compare with)"] if change["outputs_added"] else []
        warning = f"interface changed by {by}: {', '.join(parts)}; see docs/linear-attention.md"
    if warning not in report.warnings:  # the budget's rollback runs the rewrite again
        report.warnings.append(warning)
    report.data["interface"] = change


def _inputs_changed(ctx: Context) -> bool:
    change = ctx.interface_change
    return change is not None and bool(change["inputs_removed"] or change["inputs_added"])


def _budget(ctx: Context) -> None:
    """The numeric budget (``graphopt.budget``), right after the rewrite: a rollback re-runs the
    rewrite stage, and every later stage sees the model that keeps the budget."""
    from graphopt import budget  # noqa: PLC0415

    budget.enforce(ctx, ctx.settings.budget, rerun=_rewrite)


def _stamp_producer(work: ir.Model, original: ir.Model) -> None:
    """graphopt wrote this model; the exporter that made the original stays on record."""
    from graphopt.host import library_versions  # noqa: PLC0415

    if original.producer_name and original.producer_name != "graphopt":
        work.metadata_props["pkg.graphopt.source_producer"] = f"{original.producer_name} {original.producer_version or ''}".strip()
    work.producer_name, work.producer_version = "graphopt", library_versions().get("graphopt", "")


def _validate(ctx: Context) -> None:
    """The rewritten model's outputs vs the original's. The parity stage ran ONNX Runtime on the first
    samples; the rest run on a compiled target that matched ORT bit for bit there (an integer graph
    runs ~10x faster compiled than as ORT function bodies), or on ORT."""
    s, report = ctx.settings, ctx.report
    rest = ctx.eval_samples[len(ctx.rewritten):]
    runner, report.data["validated_on"] = _fastest_exact_runner(ctx)
    ctx.rewritten = ctx.rewritten + (runner(rest) if rest else [])
    mask = mask_input(ctx)
    reference, rewritten = ctx.reference, ctx.rewritten
    if mask is not None:  # padding positions carry no meaning: an integer model may differ there freely
        reference, rewritten = apply_mask(reference, ctx.eval_samples, mask), apply_mask(rewritten, ctx.eval_samples, mask)
        report.data["mask"] = mask
    metrics = compare_outputs(reference, rewritten)
    checked = [k for k in metrics if (s.outputs is None or k in s.outputs) and k not in s.ignore_outputs]
    report.accuracy = {k: {**v.as_dict(), "checked": k in checked} for k, v in metrics.items()}
    report.tolerances = dataclasses.asdict(s.tolerances)
    numeric = [v for k in checked for v in s.tolerances.violations(k, metrics[k])]
    report.violations = numeric + report.violations  # numeric first: the CLI's one-line verdict names it
    if numeric:
        report.hints.append(_failure_hint(ctx, mask))


def _fastest_exact_runner(ctx: Context) -> tuple[Callable[[list], list], str]:
    first = {k: np.shape(v) for k, v in ctx.eval_samples[0].items()}
    if any({k: np.shape(v) for k, v in sample.items()} != first for sample in ctx.eval_samples):
        return (lambda rest: run_rewritten(ctx.work, rest, ctx.settings.threads)), "onnx (samples of several shapes)"
    for target, parity in ctx.report.parity.items():
        artifact = ctx.artifacts[target]
        if parity.get("ran") and parity.get("bit_exact_vs_onnx") and artifact.can_time:
            return (lambda rest: [artifact.run(sample) for sample in rest]), f"{target} (bit-exact with onnx on {parity['samples']} samples)"
    return (lambda rest: run_rewritten(ctx.work, rest, ctx.settings.threads)), "onnx"


def _failure_hint(ctx: Context, mask: str | None) -> str:
    if mask is None and any(np.dtype(v.dtype.numpy()).kind in "iub" and "mask" in v.name.lower()
                            for v in ctx.original.graph.inputs if v.dtype is not None):
        return "padding positions were compared too: name the attention-mask input with --mask INPUT"
    if len(ctx.report.accuracy) > 1:
        return "an output nobody uses (e.g. a pooler) can be left out with --ignore-output NAME; per-layer errors show where the error grows"
    return "the per-layer error table (report.json 'layers') shows where the error grows"


def _layer_error(ctx: Context) -> None:
    from graphopt.layer_error import layer_errors  # noqa: PLC0415

    errors = layer_errors(ctx.original, ctx.work, ctx.eval_samples, threads=ctx.settings.threads, mask=mask_input(ctx))
    ctx.report.layers = [e.as_dict() for e in errors]


def _integer_only(ctx: Context) -> None:
    verdict = integer_region.verify(ctx.work)
    ctx.report.integer_only = verdict.as_dict()
    if not verdict.ok:
        ctx.report.violations.append(verdict.summary())
        dynamic = [v.name for v in ctx.original.graph.inputs if v.shape is None or not all(isinstance(d, int) for d in v.shape)]
        if dynamic:
            ctx.report.hints.append(f"inputs {dynamic} have dynamic shapes: fix them with --input-shape so shape-dependent "
                                    "values (position embeddings, shape arithmetic) fold to constants")


def _build(ctx: Context) -> None:
    s = ctx.settings
    for target, backend in ctx.backends.items():
        began = time.perf_counter()
        fits = ctx.eval_samples and not _inputs_changed(ctx)  # the original's samples do not feed a changed interface
        options = backend.Options.from_settings(s, example_inputs=ctx.eval_samples[0] if fits else None)
        ctx.artifacts[target] = artifact = backend.compile(ctx.work, target=target, options=options)
        ctx.report.targets[target] = {"compile_seconds": time.perf_counter() - began, **artifact.details}
        if target != "onnx":  # the onnx target's files are model.onnx itself, not a folder
            ctx.report.targets[target]["folder"] = artifact.target


def _parity(ctx: Context) -> None:
    """ONNX Runtime on the rewritten model for the first samples, and every compiled target against it."""
    samples = ctx.eval_samples[:PARITY_SAMPLES]
    ctx.rewritten = run_rewritten(ctx.work, samples, ctx.settings.threads)
    outputs = {}
    for target, artifact in ctx.artifacts.items():
        if target != "onnx":
            ctx.report.parity[target], outputs[target] = target_parity(
                artifact, samples, ctx.reference, ctx.rewritten, ctx.settings.tolerances, ctx.report, mask=mask_input(ctx)
            )
    pairwise_parity(ctx.report.parity, outputs)


def _latency(ctx: Context) -> None:
    s = ctx.settings
    measure_latency(ctx.report, ctx.original, ctx.artifacts, ctx.eval_samples[0], runs=s.bench_runs, optimization=s.ort_optimization,
                    threads=s.threads)


def _profile(ctx: Context) -> None:
    """Per-kernel times of each TVM target that runs here, best-effort like latency."""
    from graphopt.backends.tvm.profile import kernel_profile  # noqa: PLC0415

    profiles = ctx.report.data.setdefault("profile", {})
    from graphopt.backends.tvm import TvmArtifact  # noqa: PLC0415

    for target, artifact in ctx.artifacts.items():
        if not isinstance(artifact, TvmArtifact):
            continue  # the onnx target: ONNX Runtime has its own profiler
        if not artifact.can_time:
            ctx.report.warnings.append(f"no profile for {target}: its code does not run natively on this machine")
            continue
        try:
            profiles[target] = kernel_profile(artifact, ctx.eval_samples[0], runs=max(ctx.settings.bench_runs // 2, 3)).as_dict()
        except Exception as e:  # noqa: BLE001 — a measurement, not a verdict
            ctx.report.warnings.append(f"no profile for {target}: {type(e).__name__}: {str(e).strip()[:200]}")


def _sparsity(ctx: Context) -> None:
    """What each activation threshold (cats, teal, ...) zeroes on the validation samples, against its target."""
    from graphopt.sparsity import measure_sparsity  # noqa: PLC0415

    ctx.report.data["sparsity"] = measure_sparsity(ctx.work, ctx.eval_samples).as_dict()


def _has_thresholds(ctx: Context) -> bool:
    from graphopt.sparsity import thresholded_nodes  # noqa: PLC0415

    return _samples_fit(ctx) and bool(thresholded_nodes(ctx.work))


def _attention(ctx: Context) -> None:
    """Per replaced attention block (linear-, sigmoid-, softplus-attention): its output vs the softmax it replaced."""
    from graphopt.attention_fidelity import attention_fidelity  # noqa: PLC0415

    blocks = attention_fidelity(ctx.original, ctx.work, ctx.eval_samples, threads=ctx.settings.threads)
    ctx.report.data["attention"] = [b.as_dict() for b in blocks]


def _has_replaced_attention(ctx: Context) -> bool:
    from graphopt.attention_fidelity import replaced_blocks  # noqa: PLC0415

    return _samples_fit(ctx) and bool(replaced_blocks(ctx.work))


def _shift(ctx: Context) -> None:
    """Per shifted layer (shift-linear, MatMul/Gemm and Conv): its calibrated SQNR, its bytes packed vs float32,
    the measured dense / shift ms under latency=auto (graphopt.shift_report)."""
    from graphopt.shift_report import shift_section  # noqa: PLC0415

    found = shift_section(ctx.work)
    if found is not None:
        ctx.report.data["shift"] = found


def _has_shift(ctx: Context) -> bool:
    from graphopt.shift_report import has_shift  # noqa: PLC0415

    return has_shift(ctx.work)


def _validating(ctx: Context) -> bool:
    return ctx.settings.validate and _samples_fit(ctx)


def _samples_fit(ctx: Context) -> bool:
    """There are samples, and they feed the rewritten model (no pass changed its inputs)."""
    return bool(ctx.eval_samples) and not _inputs_changed(ctx)


COMPILE_STAGES = (
    Stage("load", _load),
    Stage("samples", _samples),
    Stage("preflight", _preflight_original, lambda ctx: _validating(ctx) or ctx.settings.bench_runs > 0),
    Stage("reference", _reference, _validating),
    Stage("rewrite", _rewrite),
    Stage("budget", _budget, lambda ctx: ctx.settings.budget is not None and _validating(ctx)),
    Stage("integer-only", _integer_only, lambda ctx: ctx.settings.integer_only),
    Stage("build", _build),
    Stage("parity", _parity, _validating),
    Stage("validate", _validate, _validating),
    Stage("layer-error", _layer_error, _validating),
    Stage("sparsity", _sparsity, _has_thresholds),
    Stage("attention", _attention, _has_replaced_attention),
    Stage("shift", _shift, _has_shift),
    Stage("latency", _latency, lambda ctx: ctx.settings.bench_runs > 0 and _samples_fit(ctx)),
    Stage("profile", _profile, lambda ctx: ctx.settings.profile and _samples_fit(ctx)),
)
