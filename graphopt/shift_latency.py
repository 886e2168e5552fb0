"""Measured latency of a linear layer's two forms, dense float32 vs ``ShiftMatMul``, on the host's tvm-llvm.

The latency half of ShiftAddViT's Mult/Shift mixture (``shift-linear(latency=auto)``): a layer is
shifted only where the shift form is faster on the target the pipeline builds for. Each candidate
shape ``[rows, K] x [K, N]`` (rows: the layer's calibrated batch × sequence) is built twice as a
one-node ONNX model with seeded N(0, 1/K) weights (the kernels' speed does not depend on the
values), compiled by graphopt's tvm-llvm backend and timed in alternating rounds (``ROUNDS`` of
``RUNS_PER_ROUND`` runs each, the median of the round medians), so a load drift hits both forms.
Results are cached on disk per target and shape (``cache_path()``: the user cache dir, a JSON
file), so a model's repeated shapes and later runs are measured once.

Only ``MatMul``/``Gemm`` layers are measured: ``ShiftConv`` on TVM is the dense conv after its codes
are decoded at compile time (``backends/tvm/kernels/shift_conv.py``), the same kernel by construction.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["DENSE_MS_KEY", "ROUNDS", "RUNS_PER_ROUND", "SHIFT_MS_KEY", "LayerTimes", "cache_path", "layer_times", "target_key"]

DENSE_MS_KEY = "pkg.graphopt.shift.dense_ms"  # node metadata: the dense layer's measured ms at its calibrated shape
SHIFT_MS_KEY = "pkg.graphopt.shift.shift_ms"  # ... and the shift form's

TARGET = "tvm-llvm"
ROUNDS = 3
RUNS_PER_ROUND = 5
_SEED = 20251206
_CACHE_VERSION = 1  # bump when the measuring method changes: older entries are ignored


@dataclasses.dataclass(frozen=True)
class LayerTimes:
    """Median ms of the dense and the shift form of one layer shape on ``target``; ``cached``: read from disk."""

    dense_ms: float
    shift_ms: float
    target: str
    cached: bool = False

    @property
    def shift_is_faster(self) -> bool:
        return self.shift_ms < self.dense_ms


def cache_path() -> Path:
    """``$XDG_CACHE_HOME/graphopt/shift-latency.json`` (``~/.cache`` without XDG_CACHE_HOME)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "graphopt" / "shift-latency.json"


def target_key(threads: int) -> str:
    """The host's tvm-llvm target as TVM spells it (its -mcpu and features) and the thread count."""
    from graphopt.backends.tvm import targets  # noqa: PLC0415

    return f"{targets.resolve(TARGET).tvm_target()} threads={threads}"


def _load() -> dict:
    try:
        data = json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}
    return data.get("entries", {}) if data.get("version") == _CACHE_VERSION else {}


def _store(key: str, entry: dict) -> None:
    """Merge one entry into the cache file (written to a temporary file, then renamed: no torn reads)."""
    path = cache_path()
    entries = _load()
    entries[key] = entry
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
            json.dump({"version": _CACHE_VERSION, "entries": entries}, f, indent=1, sort_keys=True)
        os.replace(f.name, path)
    except OSError:
        pass  # a read-only cache only costs re-measuring


def _models(rows: int, k: int, n: int, bits: int, zero_free: bool):
    import onnx.helper as oh  # noqa: PLC0415
    import onnx.numpy_helper as onh  # noqa: PLC0415
    import onnx_ir as ir  # noqa: PLC0415

    from graphopt import ops  # noqa: PLC0415
    from graphopt.ops.shift_matmul import OP_NAME, pack  # noqa: PLC0415
    from graphopt.passes.shift_linear import quantize_shift  # noqa: PLC0415

    rng = np.random.default_rng(_SEED)
    w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    codes, scale = quantize_shift(w, bits, zero_free)
    x_info = oh.make_tensor_value_info("x", 1, [rows, k])
    y_info = oh.make_tensor_value_info("y", 1, [rows, n])
    dense = oh.make_graph([oh.make_node("MatMul", ["x", "w"], ["y"])], "dense", [x_info], [y_info], [onh.from_array(w, "w")])
    shift = oh.make_graph([oh.make_node(OP_NAME, ["x", "p", "s"], ["y"], domain=ops.DOMAIN, bits=bits,
                                        zero_free=int(zero_free))], "shift", [x_info], [y_info],
                         [onh.from_array(pack(codes, bits), "p"), onh.from_array(scale, "s")])
    opsets = [oh.make_opsetid("", 17), oh.make_opsetid(ops.DOMAIN, ops.OPSET_VERSION)]
    models = [ir.serde.deserialize_model(oh.make_model(g, opset_imports=opsets)) for g in (dense, shift)]
    ops.attach_functions(models[1])
    return models, {"x": rng.standard_normal((rows, k)).astype(np.float32)}


def _measure(rows: int, k: int, n: int, bits: int, zero_free: bool, threads: int) -> tuple[float, float]:
    from graphopt.backends import tvm as tvm_backend  # noqa: PLC0415

    (dense, shift), feeds = _models(rows, k, n, bits, zero_free)
    artifacts = [tvm_backend.compile(m, target=TARGET, threads=threads, example_inputs=feeds) for m in (dense, shift)]
    medians: list[list[float]] = [[], []]
    for _ in range(ROUNDS):  # alternate the forms: a load drift hits both
        for i, artifact in enumerate(artifacts):
            medians[i].append(artifact.time(feeds, runs=RUNS_PER_ROUND, warmup=1).median_ms)
    return statistics.median(medians[0]), statistics.median(medians[1])


def layer_times(rows: int, k: int, n: int, bits: int = 5, zero_free: bool = False, threads: int = 2) -> LayerTimes:
    """Dense vs shift ms of ``[rows, K] x [K, N]`` on the host's tvm-llvm: from the cache, else measured and cached."""
    target = target_key(threads)
    key = f"{target}|rows={rows}|k={k}|n={n}|bits={bits}|zero_free={int(zero_free)}"
    entry = _load().get(key)
    if entry is not None:
        return LayerTimes(entry["dense_ms"], entry["shift_ms"], target, cached=True)
    dense_ms, shift_ms = _measure(rows, k, n, bits, zero_free, threads)
    _store(key, {"dense_ms": round(dense_ms, 4), "shift_ms": round(shift_ms, 4)})
    return LayerTimes(round(dense_ms, 4), round(shift_ms, 4), target)
