"""Random valid ONNX graphs built from the patterns graphopt's passes match, and their near misses.

``build_case(choose)`` takes a chooser (``choose.pick(seq)``, ``choose.flag(p)``, ``choose.int(lo, hi)``)
so the same generator runs under hypothesis (``hypothesis_chooser``) and from a plain seed
(``SeededChooser``, used by ``bench.fuzz_differential``). A case is a checker-valid ModelProto plus
seeded feeds; ``None`` means the draw produced something invalid and the caller draws again.
"""

from __future__ import annotations

import dataclasses
import math
import random

import numpy as np
import onnx
from onnx import TensorProto, helper

DTYPES = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16, "float64": TensorProto.DOUBLE}
PATTERNS = ("gelu_erf", "gelu_tanh", "layer_norm", "rms_norm", "instance_norm", "attention", "silu", "linear", "mlp", "chain")


class SeededChooser:
    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def pick(self, seq):
        return self.rng.choice(list(seq))

    def flag(self, p: float = 0.5) -> bool:
        return self.rng.random() < p

    def int(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)


class hypothesis_chooser:  # noqa: N801 — reads like the strategy argument it wraps
    """Adapts hypothesis' ``data`` object so shrinking works on every choice."""

    def __init__(self, data):
        from hypothesis import strategies as st  # noqa: PLC0415 — bench needs no hypothesis

        self.data, self.st = data, st

    def pick(self, seq):
        return self.data.draw(self.st.sampled_from(list(seq)))

    def flag(self, p: float = 0.5) -> bool:
        return self.data.draw(self.st.booleans())

    def int(self, lo: int, hi: int) -> int:
        return self.data.draw(self.st.integers(lo, hi))


@dataclasses.dataclass
class Case:
    model: onnx.ModelProto
    feeds: dict[str, np.ndarray]
    description: str

    @property
    def dtype(self) -> str:
        elem = self.model.graph.input[0].type.tensor_type.elem_type
        return next(k for k, v in DTYPES.items() if v == elem)


class _Builder:
    """Accumulates nodes/initializers with fresh names, at one dtype and opset."""

    def __init__(self, choose, dtype: str, opset: int):
        self.choose, self.dtype, self.opset = choose, dtype, opset
        self.np_dtype = np.dtype(dtype)
        self.nodes, self.inits, self.count = [], [], 0
        self.extra_outputs: list[str] = []

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{hint}_{self.count}"

    def const(self, value, hint="c") -> str:
        name = self.name(hint)
        self.inits.append(onnx.numpy_helper.from_array(np.asarray(value, dtype=self.np_dtype), name))
        return name

    def perturbed(self, value: float) -> float:
        """Usually the canonical constant; sometimes slightly or clearly off (a near miss)."""
        how = self.choose.pick(("exact", "exact", "exact", "tiny", "off"))
        return value if how == "exact" else value * (1 + 1e-6) if how == "tiny" else value * 1.1

    def op(self, op_type: str, inputs, hint=None, **attrs) -> str:
        out = self.name(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def binary(self, op_type: str, a: str, b: str) -> str:
        """Commutative ops take their operands in either order."""
        if op_type in ("Mul", "Add") and self.choose.flag():
            a, b = b, a
        return self.op(op_type, [a, b])

    def maybe_expose(self, value: str) -> None:
        """Near miss: an inner value that is also a graph output."""
        if self.choose.flag(0.15):
            self.extra_outputs.append(value)

    def reduce_mean(self, x: str, keepdims: int = 1) -> str:
        if self.opset >= 18:  # axes became an input in opset 18
            axes = self.name("axes")
            self.inits.append(onnx.numpy_helper.from_array(np.array([-1], np.int64), axes))
            return self.op("ReduceMean", [x, axes], keepdims=keepdims)
        return self.op("ReduceMean", [x], axes=[-1], keepdims=keepdims)


def _gelu_erf(b: _Builder, x: str) -> str:
    if b.choose.flag():
        scaled = b.op("Div", [x, b.const(b.perturbed(math.sqrt(2)))])
    else:
        scaled = b.binary("Mul", x, b.const(b.perturbed(1 / math.sqrt(2))))
    erf = b.op("Erf", [scaled])
    b.maybe_expose(erf)
    one = b.binary("Add", erf, b.const(1.0))
    if b.choose.flag():
        half = b.binary("Mul", x, b.const(b.perturbed(0.5)))
        return b.binary("Mul", half, one)
    return b.binary("Mul", b.binary("Mul", x, one), b.const(b.perturbed(0.5)))


def _gelu_tanh(b: _Builder, x: str) -> str:
    cube = b.op("Pow", [x, b.const(3.0)]) if b.choose.flag() else b.binary("Mul", x, b.binary("Mul", x, x))
    inner = b.binary("Add", x, b.binary("Mul", cube, b.const(b.perturbed(0.044715))))
    t = b.op("Tanh", [b.binary("Mul", inner, b.const(b.perturbed(math.sqrt(2 / math.pi))))])
    b.maybe_expose(t)
    one = b.binary("Add", t, b.const(1.0))
    return b.binary("Mul", b.binary("Mul", x, b.const(b.perturbed(0.5))), one)


def _layer_norm(b: _Builder, x: str, width: int) -> str:
    mean = b.reduce_mean(x)
    d = b.op("Sub", [x, mean])
    b.maybe_expose(d)
    sq = b.op("Pow", [d, b.const(2.0)]) if b.choose.flag() else b.op("Mul", [d, d])
    var = b.reduce_mean(sq)
    eps = b.pick_eps()
    std = b.op("Sqrt", [b.binary("Add", var, b.const(eps))])
    y = b.op("Div", [d, std]) if b.choose.flag() else b.binary("Mul", d, b.op("Reciprocal", [std]))
    if b.choose.flag(0.7):
        y = b.binary("Mul", y, b.const(np.linspace(0.5, 1.5, width)))
    if b.choose.flag(0.7):
        y = b.binary("Add", y, b.const(np.linspace(-0.2, 0.2, width)))
    return y


def _rms_norm(b: _Builder, x: str, width: int) -> str:
    sq = b.op("Pow", [x, b.const(2.0)]) if b.choose.flag() else b.op("Mul", [x, x])
    ms = b.reduce_mean(sq)
    b.maybe_expose(ms)
    std = b.op("Sqrt", [b.binary("Add", ms, b.const(b.pick_eps()))])
    y = b.op("Div", [x, std]) if b.choose.flag() else b.binary("Mul", x, b.op("Reciprocal", [std]))
    if b.choose.flag(0.7):
        y = b.binary("Mul", y, b.const(np.linspace(0.5, 1.5, width)))
    return y


def _instance_norm(b: _Builder, x: str, shape: list[int]) -> str:
    """InstanceNormalization over [N, C, spatial..] (a rank-2 input has no spatial axis: left as it is)."""
    if len(shape) < 3:
        return x
    channels = shape[1]
    return b.op("InstanceNormalization", [x, b.const(np.linspace(0.5, 1.5, channels)), b.const(np.linspace(-0.2, 0.2, channels))],
                epsilon=b.pick_eps())


def _silu(b: _Builder, x: str) -> str:
    s = b.op("Sigmoid", [x])
    b.maybe_expose(s)
    return b.binary("Mul", x, s)


def _linear(b: _Builder, x: str, width: int, rank: int, conv: bool = True) -> str:
    kind = b.choose.pick(("MatMul", "Gemm", "Conv")[:3 if conv else 2] if rank in (2, 3) else ("MatMul",))
    rng = np.random.default_rng(b.count)
    if kind == "Gemm" and rank == 2:
        w = b.const(rng.standard_normal((width, width)) * 0.3)
        return b.op("Gemm", [x, w, b.const(np.linspace(-1, 1, width))], transB=int(b.choose.flag()))
    if kind == "Conv" and rank == 3:  # [N, C, L]: a 1-D conv over the last axis, keeping its width
        w = b.const(rng.standard_normal((4, 4, 1)) * 0.3)
        return b.op("Conv", [x, w, b.const(np.linspace(-1, 1, 4))])
    y = b.op("MatMul", [x, b.const(rng.standard_normal((width, width)) * 0.3)])
    return b.binary("Add", y, b.const(np.linspace(-1, 1, width))) if b.choose.flag() else y


def _mlp(b: _Builder, x: str, width: int, rank: int) -> str:
    """A transformer MLP: linear, activation (GELU or SiLU), linear; or gated: silu(linear) * linear, then linear."""
    act = b.choose.pick((_gelu_erf, _gelu_tanh, _silu))
    h = act(b, _linear(b, x, width, rank, conv=False))
    if b.choose.flag(0.4):
        h = b.binary("Mul", _silu(b, _linear(b, x, width, rank, conv=False)), _linear(b, x, width, rank, conv=False))
    return _linear(b, h, width, rank, conv=False)


def _attention(b: _Builder, q: str, k: str, v: str, seq: int, head: int) -> str:
    kt = b.op("Transpose", [k], perm=[0, 1, 3, 2])
    scale = b.perturbed(1 / math.sqrt(head))
    if b.choose.flag():  # scale after the product, by Mul or Div
        s = b.op("MatMul", [q, kt])
        s = b.binary("Mul", s, b.const(scale)) if b.choose.flag() else b.op("Div", [s, b.const(1 / scale)])
    else:  # scale folded into Q first
        s = b.op("MatMul", [b.binary("Mul", q, b.const(scale)), kt])
    if b.choose.flag(0.6):
        mask = np.triu(np.full((seq, seq), -1e4 if b.dtype == "float16" else -1e9), 1)
        s = b.binary("Add", s, b.const(mask if b.choose.flag() else mask[None, None]))
    b.maybe_expose(s)
    p = b.op("Softmax", [s], axis=-1)
    return b.op("MatMul", [p, v])


def _pick_eps(self) -> float:
    return self.choose.pick((1e-5, 1e-6, 1e-12, 1e-3))


_Builder.pick_eps = _pick_eps


def build_case(choose) -> Case | None:
    pattern = choose.pick(PATTERNS)
    dtype = choose.pick(("float32", "float32", "float16", "float64"))
    opset = choose.int(13, 23)
    dynamic = choose.flag(0.3)
    b = _Builder(choose, dtype, opset)
    elem = DTYPES[dtype]
    inputs, feeds_shapes = [], {}
    rng = np.random.default_rng(choose.int(0, 2**16))

    def add_input(name, shape, symbolic):
        inputs.append(helper.make_tensor_value_info(name, elem, symbolic))
        feeds_shapes[name] = shape

    if pattern == "attention":
        batch, heads, seq, head = choose.int(1, 2), choose.int(1, 2), choose.int(1, 5), choose.pick((4, 8))
        shape = [batch, heads, seq, head]
        sym = ["B", heads, "S", head] if dynamic else shape
        if choose.flag(0.3):  # a mask needs a static seq length
            sym = ["B", heads, seq, head] if dynamic else shape
        for n in ("q", "k", "v"):
            add_input(n, shape, sym)
        if any(isinstance(d, str) and d == "S" for d in sym):
            b.choose = _NoMask(choose)
        y = _attention(b, "q", "k", "v", seq, head)
        b.choose = choose
    else:
        width = choose.pick((4, 8))
        rank = choose.int(2, 4)
        shape = [choose.int(1, 3) for _ in range(rank - 1)] + [width]
        if pattern == "linear" and rank == 3 and choose.flag():
            shape = [shape[0], 4, width]
        sym = [f"d{i}" if dynamic and i < rank - 1 else s for i, s in enumerate(shape)]
        add_input("x", shape, sym)
        x = "x"
        steps = [pattern] if pattern != "chain" else [choose.pick(PATTERNS[:-1]) for _ in range(choose.int(2, 3))]
        for step in steps:
            if step == "attention":
                continue
            x = {
                "gelu_erf": lambda v: _gelu_erf(b, v),
                "gelu_tanh": lambda v: _gelu_tanh(b, v),
                "layer_norm": lambda v: _layer_norm(b, v, width),
                "rms_norm": lambda v: _rms_norm(b, v, width),
                "instance_norm": lambda v: _instance_norm(b, v, shape),
                "silu": lambda v: _silu(b, v),
                "linear": lambda v: _linear(b, v, width, rank),
                "mlp": lambda v: _mlp(b, v, width, rank),
            }[step](x)
            if step == "linear" and rank == 3 and shape[1] != 4 and "Conv" in b.nodes[-1].op_type:
                return None
        y = x
    model = _checked_model(b, inputs, y, elem, opset)
    if model is None:
        return None
    feeds = {n: rng.standard_normal(s).astype(dtype) for n, s in feeds_shapes.items()}
    return Case(model, feeds, f"{pattern} {dtype} opset {opset}{' dynamic' if dynamic else ''} ops={[n.op_type for n in b.nodes]}")


def _checked_model(b: _Builder, inputs: list, y: str, elem: int, opset: int) -> onnx.ModelProto | None:
    """The built graph as a model with inferred output types, or None when ONNX's checker refuses it."""
    outputs = [helper.make_tensor_value_info("y", elem, None)]
    b.nodes.append(helper.make_node("Identity", [y], ["y"]))
    outputs += [helper.make_tensor_value_info(name, elem, None) for name in dict.fromkeys(b.extra_outputs)]
    graph = helper.make_graph(b.nodes, "fuzz", inputs, outputs, b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8 if opset < 21 else 10)
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        # outputs carry their inferred types so the interface check compares real shapes
        for out in model.graph.output:
            inferred = next((v for v in model.graph.value_info if v.name == out.name), None)
            if inferred is not None:
                out.type.CopyFrom(inferred.type)
        del model.graph.value_info[:]
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError):
        return None
    return model


class _NoMask:
    """A chooser that never adds the (static-shaped) causal mask: the sequence length is symbolic."""

    def __init__(self, inner):
        self.inner = inner
        self.pick, self.int = inner.pick, inner.int

    def flag(self, p: float = 0.5) -> bool:
        return False if p == 0.6 else self.inner.flag(p)
