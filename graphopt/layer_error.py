"""Per-layer error of quantized rewrites: each integer tensor vs the float value it stands for.

Every place where a graphopt pass turned a float value into integers is a probe point:

- a ``QuantizeLinear`` a pass inserted (an island's input, ``int8-linear``'s activations): its
  output times its scale vs the float input, in the original model;
- a ``Clip`` the ``integer-chain`` pass made in place of such a QuantizeLinear (node metadata
  ``pkg.graphopt.quantizes`` names the float value, ``pkg.graphopt.scale`` the scale and
  ``pkg.graphopt.zero_point``, when there is one, the zero point);
- a ``DequantizeLinear`` a pass inserted whose output kept the original value's name (an island's
  output, e.g. the ``softmax`` it replaced).

Each point is compared with the same-named value of the original model on the run's samples:
cosine, SQNR and max abs error, in graph order, with the op that reads the integer tensor (or
produced it). Entries at or below -1e30 in the original (additive attention masks) are left out:
they saturate by design; so are padding positions when the run has a mask input (as in the
accuracy check). The error is cumulative (each point sees every rewrite upstream of it),
which is what tells where accuracy goes.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from graphopt.calibrate import Calibrator
from graphopt.metrics import cosine, sqnr_db
from graphopt.pipeline import PROVENANCE_PASS

__all__ = ["LayerError", "layer_errors"]

QUANTIZES, SCALE, ZERO_POINT = "pkg.graphopt.quantizes", "pkg.graphopt.scale", "pkg.graphopt.zero_point"
MASK_FILL = -1e30


@dataclasses.dataclass(frozen=True)
class LayerError:
    value: str  # the float value's name in the original model
    where: str  # "input of Shiftmax", "output of IntLayerNorm", ...
    made_by: str  # the pass that made the probe point
    cosine: float
    sqnr_db: float
    max_abs: float

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class _Probe:
    original: str  # value name in the original model
    rewritten: str  # value name in the rewritten model
    scale: float | np.ndarray | None  # multiply the rewritten value by this (per channel: last axis)
    where: str
    made_by: str
    zero_point: float = 0.0  # subtracted from the rewritten value before scaling


def _scalar(value: ir.Value | None) -> float | None:
    tensor = None if value is None else ir.convenience.get_const_tensor(value)
    if tensor is None or tensor.size != 1:
        return None
    return float(tensor.numpy().ravel()[0])


def _readers(value: ir.Value) -> str:
    names = sorted({u.node.op_type for u in value.uses() if u.node.op_type not in ("Cast", "Clip")})
    if not names:  # look through the Cast an int8 consumer needs
        names = sorted({u2.node.op_type for u in value.uses() for o in u.node.outputs for u2 in o.uses()})
    return "/".join(names) or "output"


def _probes(rewritten: ir.Model, original_names: set[str]) -> list[_Probe]:
    probes, seen = [], set()
    for node in rewritten.graph:
        made_by = node.metadata_props.get(PROVENANCE_PASS)
        if made_by is None:
            continue
        if QUANTIZES in node.metadata_props:
            source, scale = node.metadata_props[QUANTIZES], np.asarray(json.loads(node.metadata_props[SCALE]))
            zero = float(node.metadata_props.get(ZERO_POINT, 0))
            probe = _Probe(source, node.outputs[0].name, scale, f"input of {_readers(node.outputs[0])}", made_by, zero)
        elif node.op_type == "QuantizeLinear" and node.domain == "":
            source, scale = node.inputs[0].name, _scalar(node.inputs[1])
            zero = _scalar(node.inputs[2]) if len(node.inputs) > 2 else None
            if scale is None:
                continue
            probe = _Probe(source, node.outputs[0].name, scale, f"input of {_readers(node.outputs[0])}", made_by, zero or 0.0)
        elif node.op_type == "DequantizeLinear" and node.domain == "":
            producer = node.inputs[0].producer()
            source = node.outputs[0].name
            where = f"output of {producer.op_type if producer is not None else node.inputs[0].name}"
            probe = _Probe(source, source, None, where, made_by)
        else:
            continue
        if probe.original in original_names and (probe.original, probe.where) not in seen:
            seen.add((probe.original, probe.where))
            probes.append(probe)
    return probes


def _value_names(model: ir.Model) -> set[str]:
    names = {v.name for v in model.graph.inputs}
    names.update(o.name for node in model.graph for o in node.outputs)
    return names


def _real_positions(array: np.ndarray, keep: np.ndarray | None) -> np.ndarray:
    """``array`` without the padding positions ``keep`` ([batch, seq], True = real token) marks: the
    first axis after the batch that has the sequence's length (rows of [batch, seq, ...], query rows
    of [batch, heads, seq, ...], keys of a transposed [batch, heads, dim, seq]); any other value whole."""
    if keep is None or array.ndim < 2 or array.shape[0] != keep.shape[0]:
        return array.ravel()
    axis = next((a for a in range(1, array.ndim) if array.shape[a] == keep.shape[1]), None)
    if axis is None:
        return array.ravel()
    return np.moveaxis(array, axis, 1)[keep].ravel()


def layer_errors(
    original: ir.Model, rewritten: ir.Model, samples: Sequence[Mapping[str, np.ndarray]], *, max_samples: int = 8, threads: int = 2,
    mask: str | None = None,
) -> list[LayerError]:
    """The error at every probe point of ``rewritten`` (see the module docstring), in graph order;
    with ``mask`` (an input marking real tokens), padding positions are left out as in the accuracy check."""
    probes = _probes(rewritten, _value_names(original))
    if not probes or not samples:
        return []
    samples = list(samples)[:max_samples]
    reference = Calibrator(original, samples, threads=threads).capture(sorted({p.original for p in probes}))
    test = Calibrator(rewritten, samples, threads=threads).capture(sorted({p.rewritten for p in probes}))
    keeps = [np.asarray(s[mask]).astype(bool) if mask is not None and np.ndim(s[mask]) == 2 else None for s in samples]
    results = []
    for p in probes:
        if p.original not in reference or p.rewritten not in test:
            continue  # a value without an inferred type (after a custom-domain op) is not captured
        scale = 1.0 if p.scale is None else p.scale
        ref = np.concatenate([_real_positions(np.asarray(a, np.float64), k) for a, k in zip(reference[p.original], keeps)])
        got = np.concatenate([_real_positions((np.asarray(a, np.float64) - p.zero_point) * scale, k)
                              for a, k in zip(test[p.rewritten], keeps)])
        if ref.shape != got.shape:
            continue
        keep = np.isfinite(ref) & (ref > MASK_FILL)
        ref, got = ref[keep], got[keep]
        results.append(LayerError(p.original, p.where, p.made_by, cosine(ref, got), sqnr_db(ref, got),
                                  float(np.abs(ref - got).max()) if ref.size else 0.0))
    return results
