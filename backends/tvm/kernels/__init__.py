"""Native TVM (TE) kernels for graphopt's ops, and the converter table the ONNX importer merges.

One file per op; its converter is registered with ``@ops.implements(op, "tvm")`` beside the op's
declaration in ``graphopt.ops`` (every file here is imported, so adding a kernel is adding a file).

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

import importlib
import pkgutil

from graphopt import ops

__all__ = ["CONVERTERS", "TE_KERNELS"]

for _module in pkgutil.iter_modules(__path__):  # each kernel file registers itself (@ops.implements)
    importlib.import_module(f"{__name__}.{_module.name}")

# graphopt op type -> converter, as each kernel file registered it
CONVERTERS = ops.implementations("tvm")

# graphopt op type -> TE compute taking the op's inputs as te.Tensors and its attributes as keywords
# (the kernel tests build each alone)
TE_KERNELS = ops.implementations("tvm", part="te")
