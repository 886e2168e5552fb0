"""Which initializers train mode makes parameters, and how.

- Float initializers: float parameters, as in eval mode. On an ``ivit`` graph these are the entry
  ``QuantizeLinear`` and exit ``DequantizeLinear`` scales: learnable quantization scales (LSQ).
- Integer (int8/uint8/int16/int32) initializers that only feed values, i.e. weights
  (``MatMulInteger`` / ``ConvInteger``), biases and embedding tables (``Add``, ``Gather``,
  ``Expand``, ...), ``IntLayerNorm``'s mult and bias, ``DyadicRequant``'s multiplier (the integer
  requantization scale ``m`` of ``m · 2^-k``): *latent* float64 parameters holding the integers,
  read through ``round_to_range`` (round half to even, clamp to the dtype's range, straight-through).
- ``ShiftMatMul``'s packed codes (int32 words of 5-bit sign/exponent codes): a float32 latent
  parameter holding the decoded weights ``±2^-e`` ``[K, N]``, read through ``shift_round``
  (DeepShift-Q rounding in the log domain, straight-through); ``as_initializer`` encodes and packs
  it again for the write-back, so a latent that did not move writes back the very words it came from.
- Every other integer initializer (zero points, ``Clip`` bounds, ``DyadicRequant``'s shift ``k``,
  ``Where``'s fill values, i.e. the integer attention-mask fill, shapes and indices) stays a fixed
  buffer: float64 for carried types, int64/bool as they are.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from graphopt import ops
from graphopt.fx.converters import STANDARD_DOMAINS
from graphopt.ops import shift_matmul

__all__ = ["as_initializer", "latent_range", "relative_lr_groups", "role", "shift_codes"]

SHIFT_ENCODING = "shift"  # module.meta["onnx"]["parameter_encodings"][name]["kind"] of a ShiftMatMul latent

_ALL = None
# (op) -> input positions where an integer initializer is a learnable value; None: all
_VALUE_INPUTS: dict[tuple[str, str], set[int] | None] = {
    **{(d, op): pos for d in STANDARD_DOMAINS for op, pos in {
        "MatMulInteger": {0, 1}, "ConvInteger": {0, 1}, "Add": _ALL, "Sub": _ALL, "Mul": _ALL, "Sum": _ALL,
        "Concat": _ALL, "Expand": {0}, "Gather": {0}, "Reshape": {0}, "Transpose": {0},
        "Unsqueeze": {0}, "Squeeze": {0}, "Slice": {0}, "Tile": {0},
    }.items()},
    (ops.DOMAIN, "IntLayerNorm"): {1, 2}, (ops.DOMAIN, "DyadicRequant"): {1},
}
_CARRIED = {ir.DataType.INT8, ir.DataType.UINT8, ir.DataType.INT16, ir.DataType.INT32}


def _is_value_use(use) -> bool:
    positions = _VALUE_INPUTS.get((use.node.domain, use.node.op_type), set())
    return positions is _ALL or use.idx in positions


def latent_range(value: ir.Value) -> tuple[float, float] | None:
    """(min, max) of ``value``'s integer dtype if train mode makes it a latent parameter, else None."""
    if value.dtype not in _CARRIED:
        return None
    uses = list(value.uses())
    if not uses or not all(_is_value_use(use) for use in uses) or value.is_graph_output():
        return None
    bounds = np.iinfo(value.dtype.numpy())
    return float(bounds.min), float(bounds.max)


def shift_codes(value: ir.Value | None) -> dict | None:
    """``{"kind", "bits", "zero_free", "k"}`` when ``value`` is an int32 initializer read only as the
    packed codes (input 1) of ``ShiftMatMul`` nodes that agree on bits, zero_free and a static K;
    else None (the codes then stay a fixed buffer)."""
    if value is None or value.dtype != ir.DataType.INT32 or value.const_value is None or value.is_graph_output():
        return None
    found = set()
    for use in value.uses():
        node = use.node
        x = node.inputs[0]
        if (node.domain, node.op_type, use.idx) != (ops.DOMAIN, shift_matmul.OP_NAME, 1) or x is None or x.shape is None \
                or not isinstance(x.shape[-1], int):
            return None
        found.add((node.attributes.get_int("bits", shift_matmul.BITS), node.attributes.get_int("zero_free", 0), x.shape[-1]))
    if len(found) != 1:
        return None
    bits, zero_free, k = found.pop()
    return {"kind": SHIFT_ENCODING, "bits": bits, "zero_free": zero_free, "k": k}


def shift_latent(packed: np.ndarray, encoding: dict) -> np.ndarray:
    """The packed codes as the float32 weights ``[K, N]`` they decode to."""
    codes = shift_matmul.unpack(packed, encoding["k"], encoding["bits"])
    return shift_matmul.decode(codes, encoding["bits"], encoding["zero_free"])


def as_initializer(module, name: str, values: np.ndarray) -> np.ndarray:
    """A trained parameter's values in the form its initializer stores: a ShiftMatMul latent
    re-rounded to codes and packed; any other parameter as it is (``write_back`` rounds integer
    latents and casts floats)."""
    encoding = module.meta["onnx"].get("parameter_encodings", {}).get(name)
    if encoding is None:
        return values
    codes = shift_matmul.encode(values, encoding["bits"], encoding["zero_free"])
    return shift_matmul.pack(codes, encoding["bits"])


def role(value: ir.Value) -> str:
    """Where the parameter is first read, e.g. ``MatMulInteger:1`` (a weight), ``DyadicRequant:1``
    (a requantization multiplier), ``QuantizeLinear:1`` (a scale): for learning-rate groups."""
    for use in value.uses():
        return f"{use.node.op_type}:{use.idx}"
    return ""


def relative_lr_groups(module, lr: float) -> list[dict]:
    """Adam parameter groups with ``lr`` relative to each parameter's size: ``lr · RMS(p)`` (at
    least ``lr``). The parameters of a train-mode module live in very different units (an int8
    weight in [-127, 127], a requantization multiplier near 2^30, a float scale near 0.01), and
    Adam moves each by about its lr per step, so one lr for all either freezes the integers or
    destroys the scales. Frozen parameters are left out."""
    groups = []
    for parameter in module.parameters():
        if parameter.requires_grad:
            rms = float(parameter.detach().double().square().mean().sqrt())
            groups.append({"params": [parameter], "lr": lr * (rms if rms > 0 else 1.0)})
    return groups
