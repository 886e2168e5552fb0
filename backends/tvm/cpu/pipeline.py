"""graphopt's CPU Relax pipeline: TVM's default CPU pipeline plus schedules, fast math and weight packing.

TVM's own CPU pipeline (``relax/backend/cpu_generic/pipeline.py``) legalizes and fuses but applies
no schedule, so every PrimFunc runs as a serial scalar loop nest (MiniLM: ~2800 ms vs ~25 ms for
ONNX Runtime). This pipeline keeps its structure and adds four steps:

0. ``ChannelsLast``: 2-D convolutions become NHWC/HWIO (``window.py`` schedules them as implicit GEMMs);
   ``PadRaggedWeights``: constant matmul weights of ragged width (a 50,257-word vocabulary) padded to
   whole register tiles, the result sliced back (``pad_weights.py``);
1. before legalization, ``FastMathTransform``: ``exp``/``erf``/``tanh``/``softmax`` become
   polynomial versions that vectorize (the libm calls they replace are scalar, one call per element);
2. after fusion, ``PrepackMatmulWeights``: constant matmul weights re-laid out as register-tile
   panels once, at compile time;
3. ``ApplyCpuSchedules`` with graphopt's rules (matmul, window, row reduction, elementwise, fallback) on
   every PrimFunc not already marked ``tirx.is_scheduled`` / ``tir.is_scheduled``.
"""

from __future__ import annotations

import logging

import tvm
from tvm import relax, tirx
from tvm.target import Target

from .common import is_scheduled
from .elementwise import Elementwise, Fallback
from .matmul import Matmul
from .pad_weights import PadRaggedWeights
from .prepack_matmul_weights import PrepackMatmulWeights
from .reduction import RowReduction
from .window import WindowReduction

logger = logging.getLogger(__name__)

__all__ = ["ApplyCpuSchedules", "cpu_pipeline", "default_rules", "legalize_passes", "lower_passes", "schedule_passes"]


def default_rules() -> list:
    """The rules in the order they are tried; the first that returns a schedule wins."""
    return [Matmul(), WindowReduction(), RowReduction(), Elementwise(), Fallback()]


@tvm.transform.module_pass(opt_level=0, name="ApplyCpuSchedules")
class ApplyCpuSchedules:
    """Schedule every PrimFunc with the first rule that fires; pre-scheduled PrimFuncs are left alone.

    Like dlight's ``ApplyDefaultSchedule``, but it honours both spellings of the "already scheduled"
    attribute and tolerates a rule that fails half-way (the next rule gets the function).
    """

    def __init__(self, target: Target, rules: list | None = None, record: dict | None = None):
        self.target = target
        self.rules = list(rules) if rules is not None else default_rules()
        self.record = record  # kernel name -> the rule that scheduled it (what a profile reports)

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        updates = {}
        for gvar, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc):
                continue
            if is_scheduled(func):
                self._note(gvar, PRESCHEDULED)
                continue
            self._note(gvar, UNSCHEDULED)
            target = func.attrs.get("target", self.target) if func.attrs is not None else self.target
            for rule in self.rules:
                try:
                    sch = rule.apply(func, target, False)
                except tvm.s_tir.ScheduleError:
                    sch = None
                if sch is not None:
                    updates[gvar] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
                    self._note(gvar, type(rule).__name__)
                    break
        for gvar, func in updates.items():
            mod[gvar] = func
        return mod

    def _note(self, gvar, rule: str) -> None:
        if self.record is not None:
            self.record[gvar.name_hint] = rule



# Convolutions run channels-last (see window.py); Relax carries the layout through pooling and
# elementwise ops, so transposes remain only where the graph leaves NHWC-capable ops.
# conv2d_transpose has no NHWC legalization: it is pinned to NCHW (transposes around it).
CHANNELS_LAST = {"relax.nn.conv2d": ["NHWC", "HWIO"], "relax.nn.conv2d_transpose": ["NCHW", "IOHW"]}


# What a profile says about kernels no rule of this pipeline scheduled.
PRESCHEDULED = "graphopt kernel"  # scheduled where it was written (int8 matmuls, integer ops)
UNSCHEDULED = "unscheduled"  # every rule declined: a serial scalar loop nest


@tvm.transform.module_pass(opt_level=0, name="GraphoptChannelsLast")
class ChannelsLast:
    """``ConvertLayout(CHANNELS_LAST)`` on modules that have a 2-D convolution, else nothing.

    Relax's layout inference visits every op, and on graphs without a convolution it only costs
    (DeBERTa's graph made it fail with ``std::bad_alloc``); where it fails, the NCHW graph stays
    (correct, and the window rule still schedules NCHW convolutions, only more slowly).
    """

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        if not _calls_op(mod, "relax.nn.conv2d"):
            return mod
        try:
            return relax.transform.Normalize()(relax.transform.ConvertLayout(CHANNELS_LAST)(mod))
        except Exception as e:  # noqa: BLE001 — TVM raises InternalError (std::bad_alloc seen) or anything else
            logger.debug("ConvertLayout failed, convolutions stay NCHW: %s", str(e).strip().splitlines()[:1])
            return mod


def _calls_op(mod: tvm.IRModule, op_name: str) -> bool:
    op = tvm.ir.Op.get(op_name)
    found = []

    def visit(expr):
        if isinstance(expr, relax.Call) and expr.op.same_as(op):
            found.append(expr)

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function) and not found:
            relax.analysis.post_order_visit(func, visit)
    return bool(found)


def legalize_passes(target: Target, fast_math: bool = True) -> list:
    """Relax -> fused PrimFuncs: pre-legalize rewrites, channels-last convs, library dispatch,
    legalize, fold, fuse."""
    return [
        relax.transform.DecomposeOpsForInference(),
        ChannelsLast(),
        PadRaggedWeights(target),
        *([relax.transform.FastMathTransform()] if fast_math else []),
        relax.backend.DispatchSampling(),
        relax.backend.DispatchSortScan(),
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
    ]


def schedule_passes(target: Target, prepack_weights: bool = True, record: dict | None = None) -> list:
    """Weight packing, then graphopt's schedule rules on every unscheduled PrimFunc (``record``
    collects kernel name -> rule)."""
    return [*([PrepackMatmulWeights(target)] if prepack_weights else []), ApplyCpuSchedules(target, record=record)]


def lower_passes() -> list:
    """Dataflow lowering + finalization, as in TVM's default CPU pipeline."""
    return [
        relax.transform.RewriteDataflowReshape(),
        relax.transform.ToNonDataflow(),
        relax.transform.RemovePurityChecking(),
        relax.transform.CallTIRRewrite(),
        relax.transform.StaticPlanBlockMemory(),
        relax.transform.LowerAllocTensor(),
        relax.transform.KillAfterLastUse(),
        relax.transform.LowerRuntimeBuiltin(),
        relax.transform.ComputePrimValue(),
        relax.transform.VMShapeLower(),
        relax.transform.AttachGlobalSymbol(),
    ]


def cpu_pipeline(target: Target, fast_math: bool = True, prepack_weights: bool = True, record: dict | None = None) -> tvm.transform.Pass:
    """The whole Relax -> VM pipeline for an LLVM CPU target, for
    ``tvm.compile(mod, target=target, relax_pipeline=cpu_pipeline(target))``.

    ``fast_math=False`` keeps libm's exp/erf (exact, scalar); ``prepack_weights=False`` keeps the
    weights' layout (the matmul rule then copies B panels at run time); ``record`` collects which
    rule scheduled each kernel.
    """
    target = Target(target) if not isinstance(target, Target) else target

    @tvm.transform.module_pass(opt_level=0, name="GraphoptCpuPipeline")
    def _pipeline(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        passes = legalize_passes(target, fast_math) + schedule_passes(target, prepack_weights, record) + lower_passes()
        with target:
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline
