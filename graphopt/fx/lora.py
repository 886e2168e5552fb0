"""LoRA adapters for ``to_torch(model, train=True, lora={...})``.

``lora = {"rank": r, "layers": [fnmatch patterns], "alpha": a, "seed": 0}``: every 2-D weight
initializer read as the weight (input 1) of a ``MatMul``, ``Gemm`` or ``MatMulInteger`` whose
initializer name or node name matches a pattern gets ``A`` [rows, r] (uniform in ±1/sqrt(rows),
seeded) and ``B`` [r, cols] (zeros). The layer reads ``W + A·B·alpha/r`` instead of ``W``
(= ``x·W + (x·A)·B·alpha/r`` for a float weight; an int8 latent weight is rounded and clipped after
the sum, so the integer layer stays integer). ``B = 0`` makes the adapted module compute exactly
what the graph does until a step moves B. The base weight is frozen; A and B are the parameters
that train (``meta["onnx"]["lora"]``: initializer -> its A and B attributes and the scale).

Write-back: ``merge_lora(module)`` gives the merged ``W + A·B·alpha/r`` of each adapted
initializer (float64 for an integer latent: write-back rounds and clips it to the dtype).
"""

from __future__ import annotations

import fnmatch

import numpy as np
import onnx_ir as ir
import torch

from graphopt.errors import UsageError
from graphopt.fx.converters import STANDARD_DOMAINS

__all__ = ["adapted_weight", "check_options", "merge_lora", "wants_adapter"]

_LINEAR = {"MatMul", "Gemm", "MatMulInteger"}


def check_options(lora: dict) -> dict:
    unknown = set(lora) - {"rank", "layers", "alpha", "seed"}
    if unknown or "rank" not in lora or int(lora["rank"]) < 1:
        raise UsageError(f"lora takes rank (>= 1), layers, alpha, seed; got {sorted(lora)}")
    rank = int(lora["rank"])
    return {"rank": rank, "layers": list(lora.get("layers", ["*"])), "alpha": float(lora.get("alpha", rank)),
            "seed": int(lora.get("seed", 0))}


def wants_adapter(value: ir.Value, patterns: list[str]) -> bool:
    """Whether the initializer ``value`` is a linear layer's weight named by ``patterns``."""
    if value.shape is None or len(value.shape) != 2:
        return False
    for use in value.uses():
        node = use.node
        if node.domain in STANDARD_DOMAINS and node.op_type in _LINEAR and use.idx == 1:
            if any(fnmatch.fnmatchcase(value.name, p) or fnmatch.fnmatchcase(node.name or "", p) for p in patterns):
                return True
    return False


def initial_factors(shape, rank: int, dtype: torch.dtype, generator: torch.Generator):
    rows, cols = int(shape[0]), int(shape[1])
    bound = 1.0 / float(np.sqrt(rows))
    a = (torch.rand(rows, rank, generator=generator, dtype=torch.float64) * 2 - 1) * bound
    return a.to(dtype), torch.zeros(rank, cols, dtype=dtype)


def adapted_weight(w, a, b, *, scale: float):
    return w + torch.matmul(a, b) * scale


def merge_lora(module) -> dict[str, np.ndarray]:
    """ONNX initializer name -> ``W + A·B·alpha/r`` for every adapted weight of ``module`` (the other
    parameters are read as they are, through ``module.parameter_names``)."""
    merged = {}
    for name, entry in module.meta["onnx"].get("lora", {}).items():
        w = module.get_parameter(module.parameter_names[name])
        a, b = module.get_parameter(entry["A"]), module.get_parameter(entry["B"])
        with torch.no_grad():
            merged[name] = adapted_weight(w, a, b, scale=entry["scale"]).cpu().numpy()
    return merged
