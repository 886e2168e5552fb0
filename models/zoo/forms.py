"""The forms models arrive in, made from a zoo entry (or the pretrained MiniLM):

- ``-qdq``: ONNX Runtime ``quantize_static``, QDQ format, int8 per-channel weights, calibrated on
  the entry's seeded inputs;
- ``-int8-castmul`` / ``-int8-dql``: weight-only int8, every MatMul weight stored as int8 per output
  column and dequantized in the graph by ``Cast + Mul`` or by ``DequantizeLinear``;
- ``-fp16``: ONNX Runtime's float16 converter (float32 inputs and outputs kept);
- ``-constants``: every initializer a ``Constant`` node (as some converters write them);
- ``-dynamic``: batch and sequence (or image size) dynamic, legacy exporter at opset 17;
- ``-ort-opt``: ONNX Runtime's transformers optimizer (``com.microsoft`` fused ops).
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as nh

__all__ = ["entries", "weight_only_int8", "weights_as_constants"]

CALIBRATION_SAMPLES = 8


def weight_only_int8(proto: onnx.ModelProto, style: str) -> onnx.ModelProto:
    """Every rank-2 float MatMul weight initializer stored int8 per output column, dequantized in the graph."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    weights = {n.input[1] for n in graph.node if n.op_type == "MatMul" and n.input[1] in inits}
    dequantize = []
    for name in sorted(weights):
        w = nh.to_array(inits[name]).astype(np.float64)
        if w.ndim != 2 or inits[name].data_type != onnx.TensorProto.FLOAT:
            continue
        scale = np.where(np.abs(w).max(0) > 0, np.abs(w).max(0) / 127, 1.0)
        q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
        graph.initializer.remove(inits[name])
        graph.initializer.extend([nh.from_array(q, f"{name}_int8"), nh.from_array(scale.astype(np.float32), f"{name}_scale")])
        if style == "castmul":
            dequantize += [oh.make_node("Cast", [f"{name}_int8"], [f"{name}_float"], to=onnx.TensorProto.FLOAT),
                           oh.make_node("Mul", [f"{name}_float", f"{name}_scale"], [name])]
        else:
            graph.initializer.append(nh.from_array(np.zeros(q.shape[1], np.int8), f"{name}_zero"))
            dequantize.append(oh.make_node("DequantizeLinear", [f"{name}_int8", f"{name}_scale", f"{name}_zero"], [name], axis=1))
    for i, node in enumerate(dequantize):
        graph.node.insert(i, node)
    if min((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=13) < 13 and style != "castmul":
        raise ValueError("per-axis DequantizeLinear needs opset 13")
    return model


def weights_as_constants(proto: onnx.ModelProto) -> onnx.ModelProto:
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    constants = [oh.make_node("Constant", [], [t.name], value=t) for t in model.graph.initializer]
    del model.graph.initializer[:]
    for i, node in enumerate(constants):
        model.graph.node.insert(i, node)
    return model


def qdq(proto: onnx.ModelProto, samples: list[dict], ops: list[str]) -> onnx.ModelProto:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(samples)

        def get_next(self):
            return next(self.items, None)

    with tempfile.TemporaryDirectory() as folder:
        src, dst = os.path.join(folder, "m.onnx"), os.path.join(folder, "q.onnx")
        onnx.save(proto, src)
        quantize_static(src, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=True, weight_type=QuantType.QInt8,
                        activation_type=QuantType.QInt8, op_types_to_quantize=ops)
        return onnx.load(dst)


def fp16(proto: onnx.ModelProto) -> onnx.ModelProto:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    import onnx_ir as ir

    converted = ir.serde.deserialize_model(convert_float_to_float16(proto, keep_io_types=True, disable_shape_infer=True))
    converted.graph.sort()  # the converter appends its input casts after their readers
    return ir.serde.serialize_model(converted)


def ort_optimized(proto: onnx.ModelProto, heads: int, hidden: int, model_type: str) -> onnx.ModelProto:
    from onnxruntime.transformers.optimizer import optimize_model

    with tempfile.TemporaryDirectory() as folder:
        src = os.path.join(folder, "m.onnx")
        onnx.save(proto, src)
        return optimize_model(src, model_type=model_type, num_heads=heads, hidden_size=hidden, opt_level=1,
                              use_gpu=False, only_onnxruntime=False).model


def _derived(base, name: str, form: str, make, inputs=None, transformer=None):
    from graphopt.models import _export
    from graphopt.models.zoo import _FILES, Entry

    def build():
        return _export.cached(f"zoo-{name}", {"form": form, "base": base.name}, lambda: make(base.build()).SerializeToString(),
                              files=_FILES)

    return Entry(name, base.family, base.exporter, base.opset, form, build, inputs or base.inputs,
                 base.transformer if transformer is None else transformer)


def _dynamic(arch_name: str):
    from graphopt.models import _export
    from graphopt.models.zoo import _FILES, _module
    from graphopt.models.zoo.architectures import ARCHITECTURES, make_inputs

    arch = ARCHITECTURES[arch_name]
    config = arch.config("small")
    feeds = make_inputs(arch, config, batch=2)
    axes = {0: "batch", 1: "sequence"} if arch.inputs == "text" else {0: "batch", 2: "height", 3: "width"}
    dynamic = {name: axes for name in feeds}

    def build():
        return _export.cached(f"zoo-{arch_name}-dynamic", {"opset": 17}, lambda: _export.export(
            _module(arch, config), feeds, [arch.output], exporter="legacy", opset=17, dynamic=dynamic), files=_FILES)

    return build, lambda seed: make_inputs(arch, config, seed, batch=2)


def _minilm_entries():
    from graphopt.models import minilm
    from graphopt.models.zoo import Entry

    def inputs(seed: int):
        sentences = minilm.sentences()
        picked = [sentences[(seed * 2 + i) % len(sentences)] for i in range(2)]
        return minilm.tokenize(picked, seq_len=32)

    base = Entry("minilm", "text-encoder", "dynamo", 18, "plain", minilm.build, inputs)
    return [
        _derived(base, "minilm-int8-castmul", "int8-castmul", lambda p: weight_only_int8(p, "castmul")),
        _derived(base, "minilm-qdq", "qdq", lambda p: qdq(p, [inputs(s) for s in range(CALIBRATION_SAMPLES)], ["MatMul"])),
    ]


def entries(found: dict) -> list:
    """The derived entries, made from ``found`` (the architecture entries)."""
    from graphopt.models.zoo import Entry

    out = []
    for base_name, ops in (("bert-legacy17", ["MatMul"]), ("vit", ["MatMul", "Conv"])):
        base = found[base_name]
        samples = [base.example_inputs(seed) for seed in range(CALIBRATION_SAMPLES)]
        short = base_name.split("-")[0]
        out += [
            _derived(base, f"{short}-qdq", "qdq", lambda p, s=samples, o=ops: qdq(p, s, o)),
            _derived(base, f"{short}-int8-castmul", "int8-castmul", lambda p: weight_only_int8(p, "castmul")),
            _derived(base, f"{short}-int8-dql", "int8-dql", lambda p: weight_only_int8(p, "dql")),
            _derived(base, f"{short}-fp16", "fp16", fp16),
            _derived(base, f"{short}-constants", "constants", weights_as_constants),
        ]
    for arch_name in ("bert", "vit"):
        build, inputs = _dynamic(arch_name)
        base = found[arch_name]
        out.append(Entry(f"{arch_name}-dynamic", base.family, "legacy", 17, "dynamic", build, inputs, True))
    bert = found["bert-legacy17"]
    out.append(_derived(bert, "bert-ort-opt", "ort-opt", lambda p: ort_optimized(p, 4, 64, "bert")))
    return out + _minilm_entries()
