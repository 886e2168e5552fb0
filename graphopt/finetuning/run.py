"""``graphopt.finetune``: the rewritten model distilled from the original, written back, validated.

    result = graphopt.finetune("out/model.onnx", "model.onnx", "train.npz", steps=200, lr=1e-4)
    result.model                          # the rewritten onnx_ir.Model with the trained weights
    result.losses                         # the loss of every step
    result.report.data["finetune"]        # steps, lr, seed, world size, loss curve, metrics before/after
    result.save("tuned/")                 # model.onnx, report.json, report.html, loss.png (atomically)

The teacher (the original model) runs once in ONNX Runtime on the data; its outputs are the
targets. The student (the rewritten model) becomes a torch module (``graphopt.to_torch``; in train
mode where that exists, so integer weights train as latent floats); Adam trains the chosen
parameters; ``write_back`` puts them into the student's initializers in their own element types.
A held-out part of the data (``holdout``, or ``eval``) never trains: the validation compares the
student before and after with the original on it, with compile's own validation stage.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import inspect
import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from graphopt import capture, data, storage
from graphopt.errors import CheckFailedError, UsageError
from graphopt.finetuning import layers
from graphopt.finetuning.distributed import World, world
from graphopt.finetuning.examples import Example, cut_rows, split_held_out, stack, stackable
from graphopt.finetuning.loss import Distillation
from graphopt.finetuning.write_back import write_back
from graphopt.metrics import Tolerances
from graphopt.report import Report, model_summary, op_histogram

__all__ = ["FinetuneResult", "finetune"]

VALIDATION_ROWS = 64  # held-out rows per validation run when rows stack


@dataclasses.dataclass
class FinetuneResult:
    model: ir.Model  # the student with the trained weights written back
    student: ir.Model  # the student as given (post-training)
    teacher: ir.Model
    losses: list[float]
    report: Report
    seconds: float  # training time
    world: World = World()
    input_files: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.report.ok

    def check(self) -> FinetuneResult:
        if not self.report.ok:
            raise CheckFailedError("; ".join(self.report.violations))
        return self

    def save(self, outdir: str | os.PathLike, *, force: bool = False) -> list[str]:
        """Write model.onnx, report.json, report.html and loss.png into ``outdir``, all or nothing."""
        from graphopt.finetuning.plot import write_loss_png  # noqa: PLC0415
        from graphopt.outdir import staged_output  # noqa: PLC0415
        from graphopt.report_html import write_html  # noqa: PLC0415

        with staged_output(outdir, inputs=self.input_files, force=force) as staging:
            storage.save_model(self.model, os.path.join(staging, "model.onnx"))
            storage.atomic_write_text(os.path.join(staging, "report.json"), self.report.to_json())
            write_html(os.path.join(staging, "report.html"), self.report)
            write_loss_png(os.path.join(staging, "loss.png"), self.losses, title=self.report.model)
            written = sorted(os.listdir(staging))
        return [os.path.join(os.fspath(outdir), name) for name in written]


def finetune(
    student: Any,
    teacher: Any,
    data: Any,  # noqa: A002 — the CLI's --data
    *,
    steps: int = 200,
    lr: float = 1e-3,
    lr_scale: str = "relative",
    batch_size: int = 8,
    loss: str = "distill",
    trainable: Sequence[str] | str | None = None,
    seed: int = 0,
    eval: Any = None,  # noqa: A002 — the CLI's --eval
    holdout: float = 0.2,
    temperature: float = 2.0,
    lora: dict | None = None,
    layer_loss: float = 1.0,
    tolerances: Tolerances | None = None,
    threads: int = 2,
    mask: str | None = "auto",
    progress: Callable[[Iterable], Iterable] | None = None,
    name: str | None = None,
) -> FinetuneResult:
    """Distill ``student`` (the rewritten model) from ``teacher`` (the original) on ``data``.

    ``student``/``teacher``: anything ``graphopt.load`` takes; ``data``/``eval``: any form
    ``--calib`` takes (``graphopt.data``), cut into rows along axis 0 (``examples``). ``lr`` with
    ``lr_scale="relative"`` (default) is each tensor's change per step relative to its RMS
    (``loop.parameter_groups``: integer latents, scales and float weights have units apart);
    ``"absolute"`` is plain Adam. ``loss``: ``"distill"`` (variance-normalized MSE on every float
    output) or ``"kl"`` (softmax KL at ``temperature``, for logits); see ``graphopt.finetuning.loss``.
    ``layer_loss``: the weight of the per-layer targets (``graphopt.finetuning.layers``: each block a
    pass replaced, e.g. an attention made linear, against the teacher's value it replaced; 0: outputs only).
    ``trainable``: fnmatch patterns of initializer names (None: every parameter ``to_torch`` makes);
    the rest stay frozen and are written back untouched. ``lora`` (``{"rank": r, "layers":
    [patterns], "alpha": a}``, ``graphopt.fx.lora``): low-rank adapters on the matching linear
    weights train instead (with the parameters ``trainable`` names, none by default), and each
    adapted weight is written back merged. ``batch_size`` is the global batch: under ``torchrun``
    each of the ``WORLD_SIZE`` processes takes an equal share, and rank 0 validates (the others'
    results carry no validation). Deterministic: the same seed gives the same batches and weights.
    ``progress`` wraps the step range (a tqdm bar: the CLI's). Validation failing the
    ``tolerances`` (default: those of an approximating pipeline) makes ``result.ok`` False.
    """
    _check_options(steps=steps, lr=lr, lr_scale=lr_scale, batch_size=batch_size, holdout=holdout, layer_loss=layer_loss)
    import torch  # noqa: PLC0415 — torch only for fine-tuning

    with world() as w, _deterministic(seed, torch):
        teacher_model, student_model = capture.load(teacher), capture.load(student)
        _check_interfaces(student_model, teacher_model)
        mask_name = _mask_input(teacher_model, mask)
        sites = layers.layer_targets(student_model, teacher_model) if layer_loss > 0 else {}
        began = time.perf_counter()
        examples = _examples(data, teacher_model, threads, "training data", sites)
        if eval is None:
            train_examples, held_out = split_held_out(examples, holdout, seed)
        else:
            train_examples, held_out = examples, _examples(eval, teacher_model, threads, "evaluation data", sites)
        teacher_seconds = time.perf_counter() - began
        module, train_mode = _student_module(layers.with_outputs(student_model, sites), lora)
        chosen = _choose_trainable(module, trainable, lora=lora is not None)
        loss_fn = Distillation(loss, module.output_names, [e.targets for e in train_examples], temperature, mask_input=mask_name,
                               layers=list(sites), layer_weight=layer_loss)
        stacks = stackable(student_model, train_examples)

        from graphopt.finetuning.loop import train  # noqa: PLC0415
        from graphopt.fx.train_parameters import as_initializer  # noqa: PLC0415

        began = time.perf_counter()
        losses = train(module, train_examples, loss_fn, steps=steps, lr=lr, batch_size=batch_size, seed=seed, stacks=stacks,
                       world=w, input_names=module.input_names, lr_scale=lr_scale, progress=progress if w.main else None)
        seconds = time.perf_counter() - began
        trained = {onnx: as_initializer(module, onnx, module.get_parameter(module.parameter_names[onnx]).detach().cpu().numpy())
                   for onnx in chosen}  # shift latents re-rounded and packed, as shift-linear stores them
        if lora is not None:
            from graphopt.fx.lora import merge_lora  # noqa: PLC0415

            trained.update(merge_lora(module))  # W + A·B·alpha/r; integer latents rounded by write_back
        tuned = write_back(student_model, trained)

    report = Report(model=name or _describe(student), pipeline="finetune")
    report.before, report.after = model_summary(student_model), model_summary(tuned)
    report.ops_before, report.ops_after = op_histogram(student_model), op_histogram(tuned)
    report.data = {"kind": "user", "samples": len(train_examples), "eval_samples": len(held_out)}
    adapted = sorted(module.meta["onnx"].get("lora", {}))
    report.data["finetune"] = section = {
        "steps": steps, "lr": lr, "lr_scale": lr_scale, "batch_size": batch_size, "seed": seed, "loss": loss, "world_size": w.size,
        "temperature": temperature, "train_mode": train_mode, "stacked_batches": stacks,
        "examples": {"train": len(train_examples), "held_out": len(held_out)},
        "trainable": sorted(set(chosen) | set(adapted)), "distilled_outputs": [n for n in loss_fn.names if n not in sites],
        **({"layer_targets": {"weight": layer_loss, "sites": dict(sites)}} if sites else {}),
        **({"lora": {**lora, "adapted": adapted}} if lora is not None else {}), **({"mask": mask_name} if mask_name else {}),
        "loss_curve": losses, "seconds": seconds,
    }
    report.seconds = {"teacher": teacher_seconds, "train": seconds}
    if w.main:
        began = time.perf_counter()
        section["metrics_before"], section["metrics_after"] = _validate(report, teacher_model, student_model, tuned, held_out,
                                                                        tolerances=tolerances, threads=threads, mask=mask,
                                                                        stacks=stackable(student_model, held_out))
        report.seconds["validate"] = time.perf_counter() - began
    report.seconds["total"] = sum(report.seconds.values())
    files = tuple(dict.fromkeys(_paths(student) + _paths(teacher) + _paths(data) + _paths(eval)))
    return FinetuneResult(tuned, student_model, teacher_model, losses, report, seconds, w, files)


def _check_options(*, steps: int, lr: float, lr_scale: str, batch_size: int, holdout: float, layer_loss: float) -> None:
    if not layer_loss >= 0:
        raise UsageError(f"the per-layer loss weight must be 0 or more, got {layer_loss}")
    from graphopt.finetuning.loop import LR_SCALES  # noqa: PLC0415

    if lr_scale not in LR_SCALES:
        raise UsageError(f"unknown lr_scale {lr_scale!r}: valid are {', '.join(LR_SCALES)}")
    if steps < 1:
        raise UsageError(f"steps must be 1 or more, got {steps}")
    if not lr > 0:
        raise UsageError(f"the learning rate must be positive, got {lr}")
    if batch_size < 1:
        raise UsageError(f"the batch size must be 1 or more, got {batch_size}")
    if not 0 < holdout < 1:
        raise UsageError(f"holdout must be a fraction between 0 and 1, got {holdout}")


class _deterministic:  # noqa: N801 — used as a context manager
    """Seeded torch with deterministic algorithms for the run; the caller's setting and global random
    state restored after (a library call must not reseed the user's generator)."""

    def __init__(self, seed: int, torch):
        self.seed, self.torch = seed, torch

    def __enter__(self):
        self.before = self.torch.are_deterministic_algorithms_enabled()
        self.rng = self.torch.random.fork_rng(devices=[])
        self.rng.__enter__()
        self.torch.manual_seed(self.seed)
        self.torch.use_deterministic_algorithms(True)
        return self

    def __exit__(self, *exc):
        self.torch.use_deterministic_algorithms(self.before)
        self.rng.__exit__(*exc)
        return False


def _check_interfaces(student: ir.Model, teacher: ir.Model) -> None:
    """The student must take the teacher's inputs and give its outputs: that is what is distilled."""
    for kind, s, t in (("inputs", student.graph.inputs, teacher.graph.inputs), ("outputs", student.graph.outputs, teacher.graph.outputs)):
        s_names, t_names = [v.name for v in s], [v.name for v in t]
        if sorted(s_names) != sorted(t_names):
            raise UsageError(f"the model's {kind} {s_names} are not the teacher's {t_names}: "
                             "--teacher must be the original that the model was rewritten from")


def _mask_input(teacher: ir.Model, mask: str | None) -> str | None:
    """The padding-mask input the loss (and the validation) leave padded positions out by."""
    from graphopt.metrics import detect_mask_input  # noqa: PLC0415

    inputs = {v.name: (v.dtype.numpy() if v.dtype is not None else np.float32, len(v.shape) if v.shape is not None else None)
              for v in teacher.graph.inputs}
    if mask == "auto":
        return detect_mask_input(inputs)
    if mask is not None and mask not in inputs:
        raise UsageError(f"--mask names '{mask}', but the model's inputs are {sorted(inputs)} (or --mask none)")
    return mask


def _examples(source: Any, teacher: ir.Model, threads: int, where: str, sites: dict[str, str]) -> list[Example]:
    """Rows of ``source`` with the teacher's outputs, and its values at ``sites`` (student output
    -> teacher value) as targets named for the student's outputs."""
    from graphopt.stages import run_on_ort  # noqa: PLC0415

    samples = data.load_samples(source, teacher, where=where)
    outputs = run_on_ort(layers.with_outputs(teacher, sites.values()), samples, threads)
    renamed = [{**{k: v for k, v in out.items() if k not in sites.values()}, **{s: out[t] for s, t in sites.items()}} for out in outputs]
    return [row for feeds, targets in zip(samples, renamed, strict=True) for row in cut_rows(feeds, targets)]


def _student_module(student: ir.Model, lora: dict | None = None):
    """The student as a torch module, in train mode where ``to_torch`` has one (integer weights as
    latent floats with straight-through gradients)."""
    from graphopt.fx import to_torch  # noqa: PLC0415

    if "train" in inspect.signature(to_torch).parameters:
        return to_torch(student, train=True, **({"lora": lora} if lora is not None else {})), True
    if lora is not None:
        raise UsageError("lora needs graphopt.to_torch's train mode, which this graphopt lacks")
    return to_torch(student), False


def _choose_trainable(module, patterns: Sequence[str] | str | None, *, lora: bool = False) -> list[str]:
    """The initializers to train (the others are frozen); a pattern that matches nothing is an error.
    With LoRA the adapters train, the weights they adapt never, the rest only where ``patterns`` say."""
    adapted = set(module.meta["onnx"].get("lora", {}))
    names = [n for n in module.parameter_names if n not in adapted]
    if lora and not adapted:
        raise UsageError("lora: no linear weight matches its layers patterns")
    if patterns is None:
        chosen = [] if lora else names
    else:
        patterns = [patterns] if isinstance(patterns, str) else list(patterns)
        for pattern in patterns:
            if not fnmatch.filter(names, pattern):
                shown = ", ".join(names[:8]) + (f" ... ({len(names)} in all)" if len(names) > 8 else "")
                raise UsageError(f"--trainable {pattern!r} matches no parameter; the parameters are {shown or 'none'}")
        chosen = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    if not chosen and not lora:
        raise UsageError("the model has no parameter to train (no float initializer, and no train mode in graphopt.to_torch "
                         "for integer ones)")
    for onnx_name, attribute in module.parameter_names.items():
        module.get_parameter(attribute).requires_grad_(onnx_name in chosen)  # adapted weights: never (their factors train)
    return chosen


def _validate(report: Report, teacher: ir.Model, student: ir.Model, tuned: ir.Model, held_out: list[Example], *,
              tolerances: Tolerances | None, threads: int, mask: str | None, stacks: bool) -> tuple[dict, dict]:
    """compile's validation stage on the held-out data, for the student as given and as tuned;
    ``report.accuracy``/``violations`` end up those of the tuned model. Returns both metric sets."""
    from graphopt.pipeline import Pipeline  # noqa: PLC0415
    from graphopt.stages import COMPILE_STAGES, Context, Settings, run_stages  # noqa: PLC0415

    groups = [stack(held_out[i:i + VALIDATION_ROWS]) for i in range(0, len(held_out), VALIDATION_ROWS)] if stacks else held_out
    settings = Settings(pipeline=Pipeline(()), targets=("onnx",), tolerances=(tolerances or Tolerances()).resolved(True),
                        threads=threads, mask=mask)
    ctx = Context(teacher, settings, report, backends={}, original=teacher)
    ctx.eval_samples = [g.feeds for g in groups]
    outputs = {v.name for v in teacher.graph.outputs}  # not the per-layer targets
    ctx.reference = [{k: v for k, v in g.targets.items() if k in outputs} for g in groups]
    validate = [stage for stage in COMPILE_STAGES if stage.name == "validate"]
    metrics = []
    for model in (student, tuned):
        ctx.work, ctx.rewritten = model, []
        report.violations, report.hints = [], []
        run_stages(ctx, validate)
        metrics.append(report.accuracy)
    report.seconds.pop("validate", None)
    return metrics[0], metrics[1]


def _paths(source: Any) -> list[str]:
    items = [source] if isinstance(source, (str, os.PathLike)) else list(source) if isinstance(source, (list, tuple)) else []
    out = []
    for item in items:
        if isinstance(item, (str, os.PathLike)):
            path = os.fspath(item)
            out.append(path if os.path.exists(path) else path.partition(":")[2])
    return [p for p in out if p]


def _describe(model: Any) -> str:
    return os.fspath(model) if isinstance(model, (str, os.PathLike)) else type(model).__name__
