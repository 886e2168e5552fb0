"""Optional MetaSchedule tuning on top of graphopt's schedule rules (``--tune-budget N``).

graphopt's CPU rules give fast code with no tuning run. A user with time to spare can tune: the
fused kernels the rules would schedule become MetaSchedule tasks (pre-scheduled graphopt kernels,
e.g. the AVX2 int8 matmul, are left out), ``N`` trials are spent across them by TVM's gradient task
scheduler, and the best records go to a JSON database saved with the artifact (``tuning/``). A
later compile given that database (``tune_database=``) applies the records without tuning again;
kernels without a record keep graphopt's rules. Measured on this 2-core machine: ~3 s per trial
plus ~45 s of start-up, so tuning is never on by default and never in CI-sized tests beyond a few
trials.

TVM's default builder timeout (30 s) is too short here (each worker imports TVM afresh), hence
``BUILDER_TIMEOUT``; the cost model needs ``xgboost`` (``xgboost-cpu`` in requirements.txt).
"""

from __future__ import annotations

import os
import shutil

from graphopt.backends.tvm.targets import TargetSpec
from graphopt.errors import UnsupportedError

__all__ = ["DATABASE_FILES", "apply_database_pass", "copy_database", "fused_module", "tune"]

BUILDER_TIMEOUT = 300  # seconds
DATABASE_FILES = ("database_workload.json", "database_tuning_record.json")


def fused_module(mod, spec: TargetSpec):
    """``mod`` legalized and fused the way graphopt's CPU pipeline does it (the tasks' source)."""
    import tvm  # noqa: PLC0415

    from graphopt.backends.tvm.cpu import legalize_passes  # noqa: PLC0415

    target = spec.tvm_target()
    with target:
        return tvm.transform.Sequential(legalize_passes(target))(mod)


def _progress_callback(total: int, progress: bool):
    from tqdm import tqdm  # noqa: PLC0415
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback  # noqa: PLC0415
    from tvm.ir.utils import derived_object  # noqa: PLC0415

    bar = tqdm(total=total, desc="tuning", unit="trial", disable=not progress, leave=False)

    @derived_object
    class _Progress(PyMeasureCallback):
        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            bar.update(len(runner_results))

    return _Progress(), bar


def tune(fused, spec: TargetSpec, work_dir: str, trials: int, progress: bool = False) -> str:
    """Tune the unscheduled kernels of ``fused`` for ``trials`` trials; returns ``work_dir`` (the database)."""
    if not spec.runs_on_host:
        raise UnsupportedError(f"tuning measures on this machine: {spec.name} does not run here (tune tvm-llvm)")
    try:
        import xgboost  # noqa: F401, PLC0415
    except ImportError:
        raise UnsupportedError("MetaSchedule's cost model needs xgboost: pip install xgboost-cpu") from None
    from tvm.s_tir import meta_schedule as ms  # noqa: PLC0415
    from tvm.s_tir.meta_schedule import relax_integration  # noqa: PLC0415

    from graphopt.backends.tvm.cpu.common import is_scheduled  # noqa: PLC0415

    target = spec.tvm_target()
    tasks = [
        task for task in relax_integration.extract_tasks(fused, target)
        if not any(is_scheduled(f) for m in task.dispatched for f in m.functions.values() if hasattr(f, "body"))
    ]
    if not tasks:
        return work_dir
    contexts, weights = relax_integration.extracted_tasks_to_tune_contexts(tasks, work_dir=work_dir, seed=0)
    callback, bar = _progress_callback(trials, progress)
    try:
        ms.tune.tune_tasks(
            tasks=contexts,
            task_weights=weights,
            work_dir=work_dir,
            max_trials_global=trials,
            num_trials_per_iter=min(16, max(trials, 1)),
            builder=ms.builder.LocalBuilder(max_workers=os.cpu_count() or 1, timeout_sec=BUILDER_TIMEOUT),
            measure_callbacks=[*ms.measure_callback.MeasureCallback.create("default"), callback],
        )
    finally:
        bar.close()
    return work_dir


def apply_database_pass(work_dir: str):
    """A Relax pass that schedules every kernel the database holds a record for."""
    from tvm import relax  # noqa: PLC0415

    return relax.transform.MetaScheduleApplyDatabase(work_dir)


def copy_database(source: str, destination: str) -> list[str]:
    os.makedirs(destination, exist_ok=True)
    written = []
    for name in DATABASE_FILES:
        if os.path.exists(os.path.join(source, name)):
            shutil.copyfile(os.path.join(source, name), os.path.join(destination, name))
            written.append(os.path.join(destination, name))
    return written
