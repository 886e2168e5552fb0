"""Native TVM (TE) kernels for graphopt's ops, and the converter table the ONNX importer merges.

``CONVERTERS[op_type](bb, inputs, attrs) -> relax.Expr`` (inputs: Relax exprs, None for a missing
optional input; attrs: TVM's parsed ONNX attributes, without defaults). Each graphopt op becomes
``bb.emit_te`` of a TE compute, named ``graphopt_<op>``, so FuseOps and the CPU schedule rules see
ordinary injective / row-reduction PrimFuncs. Integer kernels are bit-exact with the ops' numpy
references (``graphopt.ops.get_op(name).reference``) and contain no float.

No standard ONNX op is overridden: TVM's own converters for the integer ops of the ivit graphs
(QuantizeLinear/DequantizeLinear, Cast, Clip, Where, Gather, Add/Sub/Mul, ...) agree exactly with
ONNX Runtime (tests/backends/test_tvm_kernels.py keeps checking that). One that ever disagrees gets
its converter added to ``CONVERTERS`` here, which overrides TVM's.
"""

from __future__ import annotations

from . import attention, dyadic_requant, int_layer_norm, shiftgelu, shiftmax, silu
from .attention import dot_product_attention
from .dyadic_requant import dyadic_requant as dyadic_requant_te
from .int_layer_norm import int_layer_norm as int_layer_norm_te
from .shiftgelu import shift_gelu
from .shiftmax import shiftmax as shiftmax_te
from .silu import silu as silu_te

__all__ = ["CONVERTERS", "TE_KERNELS"]

# graphopt op type -> converter
CONVERTERS = {
    "DyadicRequant": dyadic_requant.convert,
    "Shiftmax": shiftmax.convert,
    "ShiftGelu": shiftgelu.convert,
    "IntLayerNorm": int_layer_norm.convert,
    "DotProductAttention": attention.convert,
    "SigmoidLinearUnit": silu.convert,
}

# graphopt op type -> TE compute taking the op's inputs as te.Tensors and its attributes as keywords
TE_KERNELS = {
    "DyadicRequant": dyadic_requant_te,
    "Shiftmax": shiftmax_te,
    "ShiftGelu": shift_gelu,
    "IntLayerNorm": int_layer_norm_te,
    "DotProductAttention": dot_product_attention,
    "SigmoidLinearUnit": silu_te,
}
