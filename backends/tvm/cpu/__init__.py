"""graphopt's CPU code generation for TVM: schedule rules and the Relax pipeline that applies them.

TVM's CPU pipeline leaves every PrimFunc unscheduled; these rules (in the spirit of TVM's dlight,
matching loop-nest structure rather than names) give fast code without a tuning run:

    Matmul        dense / batched matmul (+ fused epilogue): register tiles, vectorized, parallel
    WindowReduction  channels-last conv (dense, grouped, depthwise) and pooling: implicit-GEMM register tiles
    RowReduction  softmax, layer norm, row sums/maxima, any dtype: rows parallel, rfactor-vectorized
    Elementwise   injective chains, any dtype: inlined, parallel outer, vectorized inner
    Fallback      anything else: parallel leading spatial loops, vectorized where injective

``cpu_pipeline(target)`` is the complete Relax pipeline that uses them; ``PrepackMatmulWeights``
(``prepack_matmul_weights.py``) lays constant matmul weights out in the Matmul rule's panels and
``PadRaggedWeights`` (``pad_weights.py``) pads ragged ones, once, at compile time.

The int8 kernels that come pre-scheduled (the ONNX converters of ``graphopt.backends.tvm.convert``
choose them per target) live in one subpackage per instruction set, on shared pieces here:

    x86/            AVX2 (sign trick, vpmaddwd) and VNNI (vpdpbusd) intrinsics and kernels
    arm/            aarch64 sdot intrinsic and kernels
    dot_intrin.py   the one template of their tensor intrinsics (description and buffers)
    dot_matmul.py   the kernels on a dot-product instruction (sdot, vpdpbusd): each target gives
                    only its ``DotInstruction``
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
