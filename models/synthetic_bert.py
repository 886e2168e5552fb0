"""A BERT-style encoder with random weights, spelled like the legacy TorchScript exporter.

Built directly with ``onnx.helper`` and numpy (no torch), so a BERT-large-sized graph
(``layers=24, hidden=1024``: ~335M parameters, ~1.3 GB of float32) takes seconds and holds at most
one weight tensor in memory at a time when ``path`` is given. Used by the tool-overhead benchmark
(``bench/overhead.py``) and by tests that want the exporter's spelling at any size.

Inputs and output (static shapes, batch 1)::

    input_ids       int64 [1, seq_len]
    attention_mask  int64 [1, seq_len]   1 = attend, 0 = padding (HuggingFace convention)
    last_hidden_state float32 [1, seq_len, hidden]

The nodes are spelled as ``torch.onnx.export(BertModel, dynamo=False, opset_version=14)`` spells
them with dynamic axes (Reshape targets computed from ``Shape``), while the inputs have static
shapes, so ``cleanup`` can fold those chains. Weights are uniform random with std 0.02:

- embeddings: ``Gather`` of word, position (``position_ids`` initializer) and token-type
  (all-zero ``token_type_ids`` initializer) tables, two ``Add``, then a LayerNorm;
- LayerNorm decomposed: ``ReduceMean, Sub, Pow(2), ReduceMean, Add(eps), Sqrt, Div, Mul, Add``
  (``axes`` an attribute below opset 18, an input from 18 on);
- mask: ``Unsqueeze(1), Unsqueeze(2), Cast(float), Sub(1, m), Mul(m, finfo(float32).min)``;
- per layer: Q/K/V ``MatMul`` + ``Add(bias, ·)``; ``Reshape`` to ``[B, S, H, D]`` with the shape
  built by ``Shape/Gather/Unsqueeze/Concat``; ``Transpose`` perm ``[0,2,1,3]`` for Q and V and
  ``[0,2,3,1]`` for K; ``MatMul``, ``Div`` by ``sqrt(D)``, ``Add`` mask, ``Softmax(-1)``,
  ``MatMul`` V, ``Transpose [0,2,1,3]``, ``Reshape`` to ``[B, S, hidden]``; output dense,
  residual ``Add``, LayerNorm; FFN with erf GELU (``torch.nn.functional.gelu``'s symbolic:
  ``Mul(Mul(x, Add(Erf(Div(x, 1.4142135)), 1)), 0.5)``, or ``gelu="half-first"`` for
  ``Mul(Mul(x, 0.5), Add(Erf(Div(x, 1.4142135)), 1))``), residual, LayerNorm.

With ``shape_chains=False`` the Reshape shapes are constant initializers instead (what the
exporter leaves after constant folding with static shapes).
"""

from __future__ import annotations

import math
import os
from typing import Literal

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["build", "example_inputs", "parameter_count"]

_ALIGN = 4096  # offset alignment of big tensors in the .data file (lets readers mmap them)
_ALIGN_THRESHOLD = 1 << 20
_MAX_POSITIONS = 512
_TYPE_VOCAB = 2


def parameter_count(layers: int = 24, hidden: int = 1024, intermediate: int = 4096, vocab: int = 30522) -> int:
    """Number of float parameters ``build`` creates for this configuration."""
    embeddings = (vocab + _MAX_POSITIONS + _TYPE_VOCAB) * hidden + 2 * hidden
    per_layer = 4 * (hidden * hidden + hidden) + 2 * hidden * intermediate + intermediate + hidden + 4 * hidden
    return embeddings + layers * per_layer


def example_inputs(seed: int = 0, seq_len: int = 128, vocab: int = 30522, padding: int = 0) -> dict[str, np.ndarray]:
    """Random token ids and an attention mask whose last ``padding`` positions are masked out."""
    rng = np.random.default_rng(seed)
    mask = np.ones((1, seq_len), dtype=np.int64)
    if padding:
        mask[:, seq_len - padding:] = 0
    return {
        "input_ids": rng.integers(0, vocab, size=(1, seq_len), dtype=np.int64),
        "attention_mask": mask,
    }


class _Builder:
    """Collects nodes and initializers; streams weights to a .data file when one is open."""

    def __init__(self, opset: int, data_file, data_name: str | None) -> None:
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self.data_file = data_file
        self.data_name = data_name
        self.counter: dict[str, int] = {}

    def fresh(self, prefix: str) -> str:
        n = self.counter.get(prefix, 0)
        self.counter[prefix] = n + 1
        return f"{prefix}_{n}" if n else prefix

    def tensor(self, name: str, array: np.ndarray) -> str:
        """Add an initializer; weights go to the data file (small tensors stay inline)."""
        array = np.asarray(array, order="C")  # (ascontiguousarray would make 0-d arrays 1-d)
        if self.data_file is None or array.nbytes < 1024:
            self.initializers.append(numpy_helper.from_array(array, name))
            return name
        offset = self.data_file.seek(0, os.SEEK_END)
        pad = -offset % _ALIGN if array.nbytes >= _ALIGN_THRESHOLD else 0
        if pad:
            self.data_file.write(b"\0" * pad)
            offset += pad
        self.data_file.write(memoryview(array).cast("B"))  # no copy
        proto = TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(array.dtype), dims=array.shape)
        proto.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self.data_name), ("offset", str(offset)), ("length", str(array.nbytes))):
            proto.external_data.add(key=key, value=value)
        self.initializers.append(proto)
        return name

    def const(self, prefix: str, value, dtype=np.float32) -> str:
        return self.tensor(self.fresh(f"onnx::{prefix}"), np.asarray(value, dtype=dtype))

    def node(self, op: str, inputs: list[str], scope: str, n_out: int = 1, **attrs) -> str | list[str]:
        name = self.fresh(f"{scope}/{op}")
        outputs = [f"{name}_output_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, **attrs))
        return outputs[0] if n_out == 1 else outputs

    # -- exporter idioms ---------------------------------------------------------------------

    def reduce_mean_last(self, x: str, scope: str) -> str:
        if self.opset >= 18:
            return self.node("ReduceMean", [x, self.const("ReduceMean", [-1], np.int64)], scope, keepdims=1)
        return self.node("ReduceMean", [x], scope, axes=[-1], keepdims=1)

    def unsqueeze(self, x: str, axis: int, scope: str) -> str:
        return self.node("Unsqueeze", [x, self.const("Unsqueeze", [axis], np.int64)], scope)

    def layer_norm(self, x: str, gamma: str, beta: str, scope: str, eps: float = 1e-12) -> str:
        mean = self.reduce_mean_last(x, scope)
        centered = self.node("Sub", [x, mean], scope)
        squared = self.node("Pow", [centered, self.const("Pow", 2.0)], scope)
        var = self.reduce_mean_last(squared, scope)
        std = self.node("Sqrt", [self.node("Add", [var, self.const("Add", eps)], scope)], scope)
        normed = self.node("Div", [centered, std], scope)
        return self.node("Add", [self.node("Mul", [normed, gamma], scope), beta], scope)

    def linear(self, x: str, weight: str, bias: str, scope: str) -> str:
        return self.node("Add", [bias, self.node("MatMul", [x, weight], scope)], scope)

    def dim(self, x: str, index: int, scope: str) -> str:
        """``x.size(index)`` as a 1-element int64 tensor: Shape, Gather, Unsqueeze."""
        shape = self.node("Shape", [x], scope)
        scalar = self.node("Gather", [shape, self.const("Gather", index, np.int64)], scope, axis=0)
        return self.unsqueeze(scalar, 0, scope)

    def shape_of(self, x: str, dims: list[int | str], scope: str, chains: bool, static: list[int]) -> str:
        """A Reshape target: symbolic dims (strings 'B', 'S') come from ``x``'s shape when ``chains``."""
        if not chains:
            return self.const("Reshape", static, np.int64)
        parts = []
        for d in dims:
            if isinstance(d, str):
                parts.append(self.dim(x, "BS".index(d), scope))
            else:
                parts.append(self.const("Concat", [d], np.int64))
        return self.node("Concat", parts, scope, axis=0)


def _weights(rng: np.random.Generator, shape: tuple[int, ...], std: float = 0.02) -> np.ndarray:
    """Uniform with mean 0 and standard deviation ``std`` (3x faster than normal samples here)."""
    out = rng.random(size=shape, dtype=np.float32)
    out -= 0.5
    out *= std * math.sqrt(12.0)
    return out


def _emit(
    b: _Builder,
    rng: np.random.Generator,
    *,
    layers: int,
    hidden: int,
    heads: int,
    intermediate: int,
    vocab: int,
    seq_len: int,
    gelu: str,
    shape_chains: bool,
) -> None:
    if hidden % heads:
        raise ValueError(f"hidden ({hidden}) must be a multiple of heads ({heads})")
    head_dim = hidden // heads

    def norm_params(prefix: str) -> tuple[str, str]:
        return (
            b.tensor(f"{prefix}.weight", 1.0 + _weights(rng, (hidden,), 0.1)),
            b.tensor(f"{prefix}.bias", _weights(rng, (hidden,))),
        )

    # Embeddings.
    scope = "/embeddings"
    word = b.node("Gather", [b.tensor("embeddings.word_embeddings.weight", _weights(rng, (vocab, hidden))), "input_ids"], scope)
    token_type = b.node(
        "Gather",
        [b.tensor("embeddings.token_type_embeddings.weight", _weights(rng, (_TYPE_VOCAB, hidden))),
         b.tensor("embeddings.token_type_ids", np.zeros((1, seq_len), np.int64))],
        scope,
    )
    x = b.node("Add", [word, token_type], scope)
    position = b.node(
        "Gather",
        [b.tensor("embeddings.position_embeddings.weight", _weights(rng, (_MAX_POSITIONS, hidden))),
         b.tensor("embeddings.position_ids", np.arange(seq_len, dtype=np.int64)[None, :])],
        scope,
    )
    x = b.node("Add", [x, position], scope)
    x = b.layer_norm(x, *norm_params("embeddings.LayerNorm"), f"{scope}/LayerNorm")

    # Extended additive mask: (1 - mask[:, None, None, :]) * finfo(float32).min
    scope = "/mask"
    mask = b.unsqueeze(b.unsqueeze("attention_mask", 1, scope), 2, scope)
    mask = b.node("Cast", [mask], scope, to=TensorProto.FLOAT)
    mask = b.node("Sub", [b.const("Sub", 1.0), mask], scope)
    mask = b.node("Mul", [mask, b.const("Mul", np.finfo(np.float32).min)], scope)

    scale = math.sqrt(head_dim)
    for i in range(layers):
        prefix = f"encoder.layer.{i}"
        scope = f"/encoder/layer.{i}"

        def dense(name: str, x_in: str, n_in: int, n_out: int, *, _prefix=prefix, _scope=scope) -> str:
            w = b.tensor(f"{_prefix}.{name}.weight_T", _weights(rng, (n_in, n_out)))
            bias = b.tensor(f"{_prefix}.{name}.bias", _weights(rng, (n_out,)))
            return b.linear(x_in, w, bias, f"{_scope}/{name.replace('.', '/')}")

        attn = f"{scope}/attention/self"
        heads_shape = ["B", "S", heads, head_dim]
        q, k, v = (dense(f"attention.self.{n}", x, hidden, hidden) for n in ("query", "key", "value"))
        q, k, v = (
            b.node("Reshape", [t, b.shape_of(t, heads_shape, attn, shape_chains, [1, seq_len, heads, head_dim])], attn)
            for t in (q, k, v)
        )
        q = b.node("Transpose", [q], attn, perm=[0, 2, 1, 3])
        k = b.node("Transpose", [k], attn, perm=[0, 2, 3, 1])
        v = b.node("Transpose", [v], attn, perm=[0, 2, 1, 3])
        scores = b.node("MatMul", [q, k], attn)
        scores = b.node("Div", [scores, b.const("Div", scale)], attn)
        scores = b.node("Add", [scores, mask], attn)
        probs = b.node("Softmax", [scores], attn, axis=-1)
        context = b.node("MatMul", [probs, v], attn)
        context = b.node("Transpose", [context], attn, perm=[0, 2, 1, 3])
        context = b.node(
            "Reshape", [context, b.shape_of(context, ["B", "S", hidden], attn, shape_chains, [1, seq_len, hidden])], attn
        )
        out = dense("attention.output.dense", context, hidden, hidden)
        out = b.node("Add", [out, x], f"{scope}/attention/output")
        x = b.layer_norm(out, *norm_params(f"{prefix}.attention.output.LayerNorm"), f"{scope}/attention/output/LayerNorm")

        h = dense("intermediate.dense", x, hidden, intermediate)
        act = f"{scope}/intermediate/intermediate_act_fn"
        erf = b.node("Erf", [b.node("Div", [h, b.const("Div", 1.4142135623730951)], act)], act)
        one_plus = b.node("Add", [erf, b.const("Add", 1.0)], act)
        if gelu == "torch":
            h = b.node("Mul", [b.node("Mul", [h, one_plus], act), b.const("Mul", 0.5)], act)
        elif gelu == "half-first":
            h = b.node("Mul", [b.node("Mul", [h, b.const("Mul", 0.5)], act), one_plus], act)
        else:
            raise ValueError(f"gelu must be 'torch' or 'half-first', got {gelu!r}")
        out = dense("output.dense", h, intermediate, hidden)
        out = b.node("Add", [out, x], f"{scope}/output")
        x = b.layer_norm(out, *norm_params(f"{prefix}.output.LayerNorm"), f"{scope}/output/LayerNorm")

    b.nodes[-1].output[0] = "last_hidden_state"  # the last LayerNorm's Add is the graph output


def build(
    layers: int = 24,
    hidden: int = 1024,
    heads: int = 16,
    intermediate: int = 4096,
    vocab: int = 30522,
    seq_len: int = 128,
    opset: int = 14,
    seed: int = 0,
    path: str | os.PathLike | None = None,
    *,
    gelu: Literal["torch", "half-first"] = "torch",
    shape_chains: bool = True,
    external_data: bool = True,
) -> onnx.ModelProto:
    """Build the encoder; defaults are BERT-large (24 layers, hidden 1024, ~335M parameters).

    Without ``path`` the weights are inline and the returned ``ModelProto`` is self-contained
    (fine for small configurations; protobuf cannot serialize more than 2 GB). With ``path``
    the model is written to ``path`` and its weights, streamed one tensor at a time, to
    ``<file name>.data`` next to it; the returned proto then references that file (external
    data, not loaded). ``external_data=False`` writes one self-contained file instead, the way
    the legacy exporter saves models under 2 GB (the whole model is then in memory once).
    Deterministic: the same arguments give byte-identical files.
    """
    if seq_len > _MAX_POSITIONS:
        raise ValueError(f"seq_len ({seq_len}) exceeds the {_MAX_POSITIONS} position embeddings")
    rng = np.random.Generator(np.random.SFC64(seed))
    options = dict(
        layers=layers, hidden=hidden, heads=heads, intermediate=intermediate, vocab=vocab,
        seq_len=seq_len, gelu=gelu, shape_chains=shape_chains,
    )
    if path is None or not external_data:
        b = _Builder(opset, None, None)
        _emit(b, rng, **options)
        model = _model(b, seq_len, hidden, opset)
        if path is not None:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            tmp_model = os.fspath(path) + ".tmp"
            onnx.save_model(model, tmp_model)
            os.replace(tmp_model, path)
        return model

    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    data_name = os.path.basename(path) + ".data"
    data_path = os.path.join(folder, data_name)
    tmp_model, tmp_data = path + ".tmp", data_path + ".tmp"
    try:
        with open(tmp_data, "wb") as data_file:
            b = _Builder(opset, data_file, data_name)
            _emit(b, rng, **options)
        model = _model(b, seq_len, hidden, opset)
        onnx.save_model(model, tmp_model)
        os.replace(tmp_data, data_path)
        os.replace(tmp_model, path)
    finally:
        for leftover in (tmp_model, tmp_data):
            if os.path.exists(leftover):
                os.unlink(leftover)
    return model


def _model(b: _Builder, seq_len: int, hidden: int, opset: int) -> onnx.ModelProto:
    graph = helper.make_graph(
        b.nodes,
        "synthetic_bert",
        inputs=[
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, seq_len]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [1, seq_len]),
        ],
        outputs=[helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, [1, seq_len, hidden])],
        initializer=b.initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        producer_name="graphopt.models.synthetic_bert",
        producer_version="1",
    )
    model.ir_version = 8 if opset <= 18 else 9 if opset <= 20 else 10
    return model

