"""Hand the linear layers that read thresholded activations to the sparse-kernel ops.

    Mul(a, MatMul(x, W_up))          a = ActivationThreshold(...) (``cats``: the gated SwiGLU/GeGLU product)
      ->  pkg.graphopt.SparseGatedMatMul(a, x, W_upᵀ)           W_upᵀ a new constant [N, K]
    MatMul(s, W)                     s = ActivationThreshold(...) (``teal``), a SparseGatedMatMul,
      ->  pkg.graphopt.SparseInputMatMul(s, W)                  or Mul(a, u) with a thresholded
                                                                factor (or a Reshape of one)
    Gemm(s, W, C; alpha, beta, transB)   (GPT-2's and the legacy exporters' linear layers)
      ->  Add(pkg.graphopt.SparseInputMatMul(s, alpha·op(W)), beta·C)     new constants; no Add without C

int8 weights (weight-only int8: ``DequantizeLinear(Wq, s[, 0], axis=1)`` or ``Mul(Cast(Wq), s)``, the
forms of ``models/zoo/forms.py`` and of ``graphopt.passes._canonical_utils``)::

    MatMul(s, DequantizeLinear(Wq, scale))         Wq int8 [K, N] constant, scale per output (or per tensor)
      ->  pkg.graphopt.SparseInputMatMulInt8(s, Wq, scale[N])
    Mul(a, MatMul(x, DequantizeLinear(Wq, scale)))
      ->  pkg.graphopt.SparseGatedMatMulInt8(a, x, Wqᵀ, scale[N])

In a graph that has thresholds, the other int8 projections with few rows (CATS's gate, attention's
projections) go to the same int8 kernel, whose dense branch is an int8 GEMV reading a quarter of the
bytes; tvm-llvm's own ``DequantizeLinear`` + ``MatMul`` runs at the float32 rate::

    MatMul(x, DequantizeLinear(Wq, scale))         x not thresholded, at most ``max_rows`` rows
      ->  pkg.graphopt.SparseInputMatMulInt8(x, Wq, scale[N])        (rule ``int8-dense-matmul``)

The TVM preparation runs this pass twice: before its constant folding, which turns a ``Cast + Mul``
int8 weight, and a DequantizeLinear one of up to 65536 elements (``fold-static-values``), into a
float32 constant and hides the int8 (larger DequantizeLinear weights it keeps: onnxscript's folder
preserves Q/DQ nodes, so they are dequantized at run time); and after it, for the float weights the
folding makes (a Transpose of a constant, ...). Running it before the folding rather than teaching
the fold to spare some weights keeps the decision (which weights feed a thresholded input) in one
place, this pass.

W is a constant float32 2-D weight in the three float rules (and C, when the Gemm has one, a
constant). The threshold nodes themselves stay (their target and site metadata are what
``graphopt.sparsity`` reads). A product ``Mul(a, u)`` is zero where ``a`` is,
so a down projection reading it skips the same rows.

Declined, with the reason: the weight is neither a constant float32 2-D matrix nor int8 dequantized
per output channel with a zero zero point (uint8, per-row or blocked scales: not taken; a Gemm's
int8 B is not taken either and becomes float after the folding); the activation is not
float32; its shape is not static; it has more than ``max_rows`` rows (batch × sequence: prefill is
compute-bound and the dense matmul is faster there); the input is not thresholded (or not a
product with a thresholded factor); the gate broadcasts against the product. An up projection
whose output has another reader is not matched at all (onnxscript's matcher leaves a subgraph
whose inner value escapes), so it stays a MatMul and only the down projection is sparse.

Why: where ``x[k]`` is 0 the row ``W[k, :]`` need not be loaded, and decode (one row) is bound by
loading W. The ops' ONNX bodies are the dense computation; the speed is in the TVM kernels
(``backends/tvm/kernels/sparse_matmul.py``). A backend pass: the TVM backend's preparation runs it
once shapes are static (``backends/tvm/importer.py``), so a model rewritten by ``cats``/``teal``
gets the kernels on ``tvm-*`` targets and stays plain MatMuls for ONNX Runtime, which has no
sparse kernel and would only run the bodies.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from graphopt import ops
from graphopt.ops.sparse_matmul import GATED_INT8_OP, GATED_OP, INPUT_INT8_OP, INPUT_OP
from graphopt.ops.threshold import OP_NAME as THRESHOLD_OP
from graphopt.pass_base import RulePass
from graphopt.passes._canonical_utils import _dequantize_parts
from graphopt.registry import register_pass
from graphopt.shapes import infer_shapes

__all__ = ["SparseLinearOptions", "SparseLinearPass"]


@dataclasses.dataclass(frozen=True)
class SparseLinearOptions:
    max_rows: int = dataclasses.field(default=8, metadata={"range": (1, 4096)})


def _made_by(value: ir.Value | None, op_type: str) -> bool:
    producer = value.producer() if value is not None else None
    return producer is not None and producer.op_type == op_type and producer.domain == ops.DOMAIN


def _sparse_source(value: ir.Value) -> bool:
    """Zero where a threshold is: the threshold's output, a SparseGatedMatMul, or a product with one."""
    if _made_by(value, THRESHOLD_OP) or _made_by(value, GATED_OP) or _made_by(value, GATED_INT8_OP):
        return True
    producer = value.producer()
    return (producer is not None and producer.domain in ("", "ai.onnx")
            and ((producer.op_type == "Mul" and any(_made_by(v, THRESHOLD_OP) for v in producer.inputs))
                 or (producer.op_type == "Reshape" and _sparse_source(producer.inputs[0]))))


def _weight(w: ir.Value) -> np.ndarray | None:
    if w.is_graph_input():
        return None
    tensor = ir.convenience.get_const_tensor(w)
    if tensor is None or len(tensor.shape) != 2 or tensor.dtype != ir.DataType.FLOAT:
        return None
    return tensor.numpy()


def _int8_weight(w: ir.Value) -> tuple[ir.Value, np.ndarray, np.ndarray] | None:
    """(Wq's value, Wq int8 [K, N], scale float32 [N]) when ``w`` is an int8 constant dequantized per
    output column (or per tensor) with a zero zero point, else None."""
    parts = _dequantize_parts(w)
    if parts is None:
        return None
    q_value, s_value, zero_value, axis = parts
    q, s = ir.convenience.get_const_tensor(q_value), ir.convenience.get_const_tensor(s_value)
    if q is None or s is None or q.dtype != ir.DataType.INT8 or len(q.shape) != 2 or s.dtype != ir.DataType.FLOAT:
        return None
    zero = ir.convenience.get_const_tensor(zero_value) if zero_value is not None else None
    if zero_value is not None and (zero is None or np.any(zero.numpy() != 0)):
        return None
    n, scale = q.shape[1], s.numpy()
    if scale.size == 1:
        scale = np.full(n, scale.reshape(()), np.float32)
    elif axis is not None:  # DequantizeLinear: a 1-D scale along axis 1 (the output columns)
        if axis % 2 != 1 or scale.shape != (n,):
            return None
    elif scale.shape not in ((n,), (1, n)):  # Mul(Cast(Wq), s): s broadcast along the rows
        return None
    return q_value, q.numpy(), np.ascontiguousarray(scale.reshape(n), np.float32)


def _decline(x: ir.Value, w: ir.Value, max_rows: int) -> str | None:
    """Why the kernels do not take ``MatMul(x, w)`` (None: they do)."""
    if _weight(w) is None and _int8_weight(w) is None:
        return (f"the weight '{w.name}' is not a constant float32 2-D matrix "
                "(nor int8 dequantized per output channel with zero zero points)")
    if x.dtype != ir.DataType.FLOAT:
        return f"the activation '{x.name}' is {x.dtype}, not float32"
    if x.shape is None or not x.shape.is_static():
        return f"the activation's shape {x.shape} is not static"
    rows = int(np.prod(list(x.shape)[:-1], dtype=np.int64))
    if rows > max_rows:
        return f"the activation has {rows} rows (> max_rows={max_rows}): the dense matmul is faster there"
    return None


def _infer_through_functions(model: ir.Model) -> None:
    """Shape inference with the graphopt ops' bodies attached (then taken off again)."""
    before = dict(model.functions)
    ops.attach_functions(model)
    try:
        infer_shapes(model)
    finally:
        for key in [k for k in model.functions if k not in before]:
            del model.functions[key]


class _GatedUp(pattern.RewriteRuleClassBase):
    def __init__(self, name: str, max_rows: int) -> None:
        super().__init__(name)
        self.max_rows = max_rows

    def pattern(self, op, a, x, w):
        return op.Mul(a, op.MatMul(x, w, _outputs=["product"]), _outputs=["gated"])

    def check(self, context, a, x, w, gated, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if not _made_by(a, THRESHOLD_OP):
            return result.fail("the gate is not an ActivationThreshold output")
        reason = _decline(x, w, self.max_rows)
        if reason:
            return result.fail(reason)
        if a.shape is None or gated.shape is None or list(a.shape) != list(gated.shape):
            return result.fail(f"the gate's shape {a.shape} is not the product's {gated.shape} (broadcast)")
        return result

    def rewrite(self, op, a, x, w, product, **_):
        name = f"{product.name}_weight_t"  # value names are unique in a graph
        weight = _weight(w)
        if weight is None:  # int8: Wqᵀ and the scale
            _, wq, scale = _int8_weight(w)
            wt = op.initializer(ir.tensor(np.ascontiguousarray(wq.T), name=name), name=name)
            s = op.initializer(ir.tensor(scale, name=f"{product.name}_scale"), name=f"{product.name}_scale")
            return getattr(op, GATED_INT8_OP)(a, x, wt, s, _domain=ops.DOMAIN, _version=ops.OPSET_VERSION)
        wt = op.initializer(ir.tensor(np.ascontiguousarray(weight.T), name=name), name=name)
        return getattr(op, GATED_OP)(a, x, wt, _domain=ops.DOMAIN, _version=ops.OPSET_VERSION)


class _SparseInput(pattern.RewriteRuleClassBase):
    def __init__(self, name: str, max_rows: int) -> None:
        super().__init__(name)
        self.max_rows = max_rows

    def pattern(self, op, x, w):
        return op.MatMul(x, w, _outputs=["out"])

    def check(self, context, x, w, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if not _sparse_source(x):
            return result.fail(f"the input '{x.name}' is not thresholded (nor a product with a thresholded factor)")
        reason = _decline(x, w, self.max_rows)
        return result.fail(reason) if reason else result

    def rewrite(self, op, x, w, out, **_):
        if _weight(w) is None:  # int8: Wq as it is stored ([K, N], rows contiguous) and the scale
            wq, _, scale = _int8_weight(w)
            s = op.initializer(ir.tensor(scale, name=f"{out.name}_scale"), name=f"{out.name}_scale")
            return getattr(op, INPUT_INT8_OP)(x, wq, s, _domain=ops.DOMAIN, _version=ops.OPSET_VERSION)
        return getattr(op, INPUT_OP)(x, w, _domain=ops.DOMAIN, _version=ops.OPSET_VERSION)


class _Int8Dense(_SparseInput):
    """MatMul(x, DequantizeLinear(Wq, s)) whose x is not thresholded, in a thresholded graph: the int8
    kernel's dense branch (an int8 GEMV; tvm-llvm's DequantizeLinear + MatMul runs at the float32 rate)."""

    def check(self, context, x, w, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if _sparse_source(x):
            return result.fail(f"the input '{x.name}' is thresholded: the sparse rules take it")
        if _int8_weight(w) is None:
            return result.fail(f"the weight '{w.name}' is not int8 dequantized per output channel")
        reason = _decline(x, w, self.max_rows)
        return result.fail(reason) if reason else result


class _SparseGemm(_SparseInput):
    """Gemm(x, W, [C]) with a thresholded x: transA=0, C absent or a constant."""

    def pattern(self, op, x, w):
        return op.Gemm(x, w, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["out"])

    def check(self, context, x, w, out, **_) -> pattern.MatchResult:
        gemm = out.producer()
        if gemm.attributes.get_int("transA", 0):
            return pattern.MatchResult().fail(f"Gemm {gemm.name} has transA=1: its input is not row-major activations")
        bias = gemm.inputs[2] if len(gemm.inputs) > 2 else None
        if bias is not None and (bias.is_graph_input() or ir.convenience.get_const_tensor(bias) is None):
            return pattern.MatchResult().fail(f"Gemm {gemm.name}'s C '{bias.name}' is not a constant")
        if _weight(w) is None and _int8_weight(w) is not None:
            return pattern.MatchResult().fail(f"Gemm {gemm.name}'s B is int8: taken once the folding has made it float32")
        return super().check(context, x, w)

    def rewrite(self, op, x, w, out, **_):
        gemm = out.producer()
        weight = _weight(w).T if gemm.attributes.get_int("transB", 0) else _weight(w)
        weight = np.ascontiguousarray(weight * np.float32(gemm.attributes.get_float("alpha", 1.0)))
        name = f"{out.name}_weight"
        y = getattr(op, INPUT_OP)(x, op.initializer(ir.tensor(weight, name=name), name=name),
                                  _domain=ops.DOMAIN, _version=ops.OPSET_VERSION)
        bias = gemm.inputs[2] if len(gemm.inputs) > 2 else None
        if bias is None:
            return y
        c = ir.convenience.get_const_tensor(bias).numpy() * np.float32(gemm.attributes.get_float("beta", 1.0))
        return op.Add(y, op.initializer(ir.tensor(c.astype(np.float32), name=f"{out.name}_bias"), name=f"{out.name}_bias"))


@register_pass("sparse-linear", options=SparseLinearOptions, category="backend")
class SparseLinearPass(RulePass):
    """Linear layers reading thresholded activations become sparse-kernel ops (SparseGatedMatMul, SparseInputMatMul,
    and their int8-weight forms)."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        if not any(n.op_type == THRESHOLD_OP and n.domain == ops.DOMAIN for n in ir.traversal.RecursiveGraphIterator(model.graph)):
            return ir.passes.PassResult(model, modified=False)  # most models (silent: the TVM preparation runs it on all)
        _infer_through_functions(model)  # the checks read shapes that stop at graphopt ops otherwise
        return super().call(model)

    def rules(self):
        rows = self.options.max_rows
        return [*_GatedUp.rule("sparse-gated-up", rows).commute(), _SparseInput.rule("sparse-input-matmul", rows),
                _SparseGemm.rule("sparse-input-gemm", rows), _Int8Dense.rule("int8-dense-matmul", rows)]

