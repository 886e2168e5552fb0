"""graphopt's CPU code generation for TVM: schedule rules and the Relax pipeline that applies them.

TVM's CPU pipeline leaves every PrimFunc unscheduled; these rules (in the spirit of TVM's dlight,
matching loop-nest structure rather than names) give fast code without a tuning run:

    Matmul        dense / batched matmul (+ fused epilogue): register tiles, vectorized, parallel
    WindowReduction  channels-last conv (dense, grouped, depthwise) and pooling: implicit-GEMM register tiles
    RowReduction  softmax, layer norm, row sums/maxima, any dtype: rows parallel, rfactor-vectorized
    Elementwise   injective chains, any dtype: inlined, parallel outer, vectorized inner
    Fallback      anything else: parallel leading spatial loops, vectorized where injective

``cpu_pipeline(target)`` is the complete Relax pipeline that uses them.
"""

from .elementwise import Elementwise, Fallback
from .matmul import Matmul
from .pipeline import ApplyCpuSchedules, cpu_pipeline, default_rules, legalize_passes, lower_passes, schedule_passes
from .prepack_matmul_weights import PrepackMatmulWeights
from .reduction import RowReduction
from .window import WindowReduction

__all__ = [
    "ApplyCpuSchedules",
    "Elementwise",
    "Fallback",
    "Matmul",
    "PrepackMatmulWeights",
    "RowReduction",
    "cpu_pipeline",
    "default_rules",
    "legalize_passes",
    "lower_passes",
    "schedule_passes",
    "WindowReduction",
]
