"""graphopt's GPU schedule rules: the integer matmuls that dlight's own Matmul rule gets wrong.

dlight's ``gpu.Matmul`` sends every int8 x int8 -> int32 matmul with all of M, N, K above 64 to
``MatmulInt8Tensorization`` on sm_70+. In TVM 0.27 that schedule cannot be built: its
software-pipeline annotations make ``InjectSoftwarePipeline`` fail with ``fragment_info_.end()``
(even on a plain TE matmul), so one int8 matmul stops the whole model. Two rules replace it:

``Int8TensorCoreMatmul``  the same WMMA (tensor core, 16x16x16 int8 -> int32) schedule without the
                          software-pipeline annotations; it builds, and the accumulation stays exact.
``IntegerSimtMatmul``     every other integer matmul (small dims, uint8 activations, zero points,
                          int32 operands): dlight's CUDA-core Matmul tiling, never the broken path,
                          without explicit unroll so fused integer epilogues stay small.

TVM's int32 WMMA fill intrinsic zeroes the accumulator with a float literal (``0x0p+0f``); it is
re-registered here with an int32 zero so integer kernels contain no float at all.

The integer row reductions (Shiftmax, IntLayerNorm, ShiftGelu's row max) are left to dlight's
``GeneralReduction``, which schedules them (one block per row, a shared-memory tree per reduction)
with no float anywhere; the elementwise rest goes to dlight's ``Fallback``.
"""

from __future__ import annotations

import re

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import get_root_block
from tvm.s_tir.dlight.gpu import Matmul
from tvm.s_tir.dlight.gpu.base import GPUScheduleRule
from tvm.s_tir.dlight.gpu.matmul import MatmulInt8Tensorization, check_sm_version, get_reduction_blocks
from tvm.s_tir.tensor_intrin import cuda as cuda_intrin
from tvm.script import tirx as T
from tvm.target import Target

__all__ = ["GRAPHOPT_GPU_RULES", "Int8TensorCoreMatmul", "IntegerSimtMatmul"]

# int8 WMMA fragments exist from sm_72 (Turing's sm_75, Ampere, Hopper)
INT8_TENSOR_CORE_SM = 72
# dlight's own threshold: a static M, N or K at or below this is not worth tensor cores
TENSOR_CORE_MIN_EXTENT = 64
# the annotations InjectSoftwarePipeline cannot lower for WMMA fragments in TVM 0.27
PIPELINE_ANNOTATIONS = ("software_pipeline_order", "software_pipeline_stage")
# a CUDA target dlight's Matmul treats as "no tensor cores" (only the arch is read for that choice)
_SIMT_ARCH = "sm_60"


def _main_reduction(func: tirx.PrimFunc):
    """(schedule, the single reduction block's statement) of a matmul-like PrimFunc, or None."""
    sch = s_tir.Schedule(func)
    blocks = sch.get_child_blocks(get_root_block(sch))
    reductions = get_reduction_blocks(sch, blocks)
    if not reductions:
        return None
    return sch.get(reductions[0])


def _operand_dtypes(block) -> tuple[set[str], str]:
    return {str(region.source.dtype) for region in block.reads}, str(block.writes[0].source.dtype)


def _is_integer(dtype: str) -> bool:
    return dtype.startswith(("int", "uint"))


def _static_extents_above(block, limit: int) -> bool:
    """Every spatial and reduction iterator (the batch one aside) is static and larger than ``limit``."""
    extents = [it.dom.extent for it in block.iter_vars]
    spatial_and_reduction = extents[1:] if len(extents) > 3 else extents
    return all(isinstance(e, tirx.IntImm) and e.value > limit for e in spatial_and_reduction)


def _drop_software_pipeline(sch: s_tir.Schedule) -> None:
    # 0.27 has no Python TIR visitor: find the blocks by name in the printed function
    for name in sorted(set(re.findall(r'T\.sblock\("([^"]+)"', sch.mod.script()))):
        for loop in sch.get_loops(sch.get_sblock(name)):
            for key in PIPELINE_ANNOTATIONS:
                if key in sch.get(loop).annotations:  # loops shared by several blocks are seen twice
                    sch.unannotate(loop, key)


class Int8TensorCoreMatmul(GPUScheduleRule):
    """int8 x int8 -> int32 matmuls with M, N, K > 64 on sm_72+: dlight's WMMA schedule, unpipelined."""

    def apply(self, func: tirx.PrimFunc, target: Target, _tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        if target.kind.name != "cuda" or check_sm_version(str(target.attrs.get("arch", ""))) < INT8_TENSOR_CORE_SM:
            return None
        block = _main_reduction(func)
        if block is None or not _static_extents_above(block, TENSOR_CORE_MIN_EXTENT):
            return None
        inputs, output = _operand_dtypes(block)
        if inputs != {"int8"} or output != "int32":
            return None
        try:
            sch = MatmulInt8Tensorization().apply(func, target, False)
        except Exception:  # noqa: BLE001 - the pattern did not fit WMMA (zero points, odd layouts): CUDA cores
            return None
        if sch is None:
            return None
        _drop_software_pipeline(sch)
        return sch


class IntegerSimtMatmul(GPUScheduleRule):
    """Integer matmuls for CUDA cores: dlight's Matmul rule, kept away from its int8 tensor-core path."""

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        block = _main_reduction(func)
        if block is None:
            return None
        inputs, output = _operand_dtypes(block)
        if not (_is_integer(output) and all(_is_integer(d) for d in inputs)):
            return None
        return _CompactMatmul().apply(func, _without_tensor_cores(target), tunable)


class _CompactMatmul(Matmul):
    """dlight's CUDA-core matmul tiling without its explicit unroll and 2-wide vectors.

    With them, the fused integer epilogue (requant, ShiftGelu: dozens of int64 operations, and
    TVM's CSE does not share subexpressions that contain loads) is pasted once per unrolled
    element: 3.5 MB of CUDA C for one tiny-BERT kernel. Without them the epilogue is one loop
    body; nvcc still unrolls the small constant loops itself.
    """

    def get_configs(self, target: Target) -> Matmul.Config:
        config = super().get_configs(target)
        config.vector_size = 1
        config.unroll = 0
        return config


def _without_tensor_cores(target: Target) -> Target:
    config = dict(target.export())
    config["arch"] = _SIMT_ARCH
    config.pop("host", None)
    return Target(config)


@T.prim_func(s_tir=True)
def _wmma_fill_s32_impl(c: T.handle) -> None:
    """TVM's ``wmma_fill_16x16x16_s32`` implementation with an int32 zero (TVM's passes ``T.float32(0)``)."""
    d1 = T.int32()
    d0 = T.int32()
    C = T.match_buffer(c, (16, 16), "int32", align=64, offset_factor=16, scope="wmma.accumulator", strides=[d1, d0])
    with T.sblock("root"):
        T.reads()
        T.writes(C[0:16, 0:16])
        T.evaluate(T.tvm_fill_fragment(C.data, 16, 16, 16, cuda_intrin.get_wmma_fragment_index(C, d1, 16, 16),
                                       T.int32(0), dtype="void"))


def _register_integer_wmma_fill() -> None:
    desc, _ = cuda_intrin.get_wmma_fill_intrin(16, 16, 16, "int32")
    s_tir.TensorIntrin.register(cuda_intrin.WMMA_FILL_16x16x16_S32_INTRIN, desc, _wmma_fill_s32_impl, override=True)


_register_integer_wmma_fill()

GRAPHOPT_GPU_RULES = (Int8TensorCoreMatmul(), IntegerSimtMatmul())
