"""The report's ``shift`` section (``report.data["shift"]``) and its terminal table.

Per shifted layer (``ShiftMatMul`` as ``graphopt.ops.shift_matmul.shift_layers`` lists it, and
``ShiftConv``): K, N (a conv's: ``C/group · prod(kernel)`` and its output channels), bits,
zero_free, the calibrated output SQNR ``shift-linear`` stamped, the weight bytes packed (codes and
scale) vs float32, and under ``shift-linear(latency=auto)`` the measured dense / shift ms. Layers
that ``latency=auto`` kept dense (their node carries the times but is still a MatMul/Gemm) are
listed under ``kept_dense``.
"""

from __future__ import annotations

import math

import onnx_ir as ir

from graphopt import ops
from graphopt.ops.shift_conv import OP_NAME as CONV_OP_NAME
from graphopt.ops.shift_matmul import BITS, OP_NAME, SQNR_KEY, shift_layers
from graphopt.shift_latency import DENSE_MS_KEY, SHIFT_MS_KEY

__all__ = ["has_shift", "print_shift", "shift_section"]


def _times(node: ir.Node) -> dict:
    props = node.metadata_props
    if DENSE_MS_KEY not in props or SHIFT_MS_KEY not in props:
        return {}
    return {"dense_ms": float(props[DENSE_MS_KEY]), "shift_ms": float(props[SHIFT_MS_KEY])}


def _conv_layer(node: ir.Node) -> dict | None:
    packed, x = node.inputs[1], node.inputs[0]
    shape = list(packed.shape) if packed is not None and packed.shape is not None else []
    channels = x.shape[1] if x is not None and x.shape is not None and len(x.shape) > 1 else None
    kernel = node.attributes.get_ints("kernel_shape", [])
    if len(shape) != 2 or not all(isinstance(d, int) for d in shape) or not isinstance(channels, int) or not kernel:
        return None
    k = channels // node.attributes.get_int("group", 1) * math.prod(kernel)
    sqnr = node.metadata_props.get(SQNR_KEY)
    return {"node": node.name, "op": CONV_OP_NAME, "k": k, "n": shape[1], "bits": node.attributes.get_int("bits", BITS),
            "zero_free": bool(node.attributes.get_int("zero_free", 0)), "sqnr_db": float(sqnr) if sqnr is not None else None,
            "packed_bytes": shape[0] * shape[1] * 4 + shape[1] * 4, "float32_bytes": k * shape[1] * 4}


def has_shift(model: ir.Model) -> bool:
    """Whether the model has a shifted layer or a layer ``latency=auto`` measured and kept dense."""
    return any((n.domain == ops.DOMAIN and n.op_type in (OP_NAME, CONV_OP_NAME)) or DENSE_MS_KEY in n.metadata_props
               for n in model.graph)


def shift_section(model: ir.Model) -> dict | None:
    """The ``shift`` section of ``model`` (an ``onnx_ir.Model``), or None without a shifted or measured layer."""
    nodes = {n.name: n for n in model.graph}
    layers = []
    for layer in (shift_layers(model) or {}).get("layers", []):
        node = nodes.get(layer["node"])
        layers.append({**layer, "op": OP_NAME, **(_times(node) if node is not None else {})})
    for node in model.graph:
        if node.domain == ops.DOMAIN and node.op_type == CONV_OP_NAME and (layer := _conv_layer(node)) is not None:
            layers.append(layer)
    kept = [{"node": n.name, "op": n.op_type, **_times(n)} for n in model.graph
            if n.domain in ("", "ai.onnx") and DENSE_MS_KEY in n.metadata_props]
    if not layers and not kept:
        return None
    packed = sum(layer["packed_bytes"] for layer in layers)
    dense = sum(layer["float32_bytes"] for layer in layers)
    section = {"layers": layers, "packed_bytes": packed, "float32_bytes": dense, "ratio": dense / packed if packed else 1.0}
    if kept:
        section["kept_dense"] = kept
    return section


def print_shift(console, section: dict, shown: int | None, table_factory, user=str) -> None:
    """The terminal table: one row per shifted layer (the first ``shown``), then the layers kept dense by latency."""
    layers, kept = section["layers"], section.get("kept_dense", [])
    title = (f"shifted layers (shift-linear): {len(layers)}, weights {section['float32_bytes'] / 1e6:.2f} MB float32 -> "
             f"{section['packed_bytes'] / 1e6:.2f} MB packed ({section['ratio']:.2f}x smaller)" if layers
             else "shift-linear: no layer shifted")
    if kept:
        title += f"; {len(kept)} kept dense by latency=auto"
    if shown is not None and len(layers) > shown:
        title += f"; the first {shown} of {len(layers)} (--verbose for all)"
    table = table_factory(title, ("layer", "op", "K x N", "bits", "SQNR dB", "packed / float32", "dense ms", "shift ms"))

    def ms(value):
        return "-" if value is None else f"{value:.4f}"

    for layer in layers[:shown]:
        codes = f"{layer['bits']}{' zero-free' if layer['zero_free'] else ''}"
        sqnr = "-" if layer["sqnr_db"] is None else f"{layer['sqnr_db']:.1f}"
        size = f"{layer['packed_bytes'] / 1e3:.1f} / {layer['float32_bytes'] / 1e3:.1f} kB"
        table.add_row(user(layer["node"]), layer.get("op", OP_NAME), f"{layer['k']} x {layer['n']}", codes, sqnr, size,
                      ms(layer.get("dense_ms")), ms(layer.get("shift_ms")))
    for layer in kept[:shown]:
        table.add_row(user(layer["node"]), f"{layer['op']} (kept dense)", "-", "-", "-", "-", ms(layer.get("dense_ms")),
                      ms(layer.get("shift_ms")))
    console.print(table)
