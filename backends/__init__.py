"""Backends: turn a rewritten model into something that runs (an artifact).

Targets: ``onnx`` (ONNX Runtime, always available) and the TVM targets ``tvm-llvm`` (host CPU),
``tvm-aarch64`` (cross-compiled edge build), ``tvm-cuda`` and any TVM target written as a JSON dict
(``{"kind": "llvm", "mtriple": "aarch64-linux-gnu"}``). Each backend module is imported only when
one of its targets is asked for, and is a ``protocol.Backend``: ``preflight(model, target)``,
``compile(model, *, target, options)`` with its own ``Options`` dataclass, returning a
``protocol.Artifact`` (run, time, save).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from graphopt.errors import UsageError

if TYPE_CHECKING:
    from graphopt.backends.protocol import Backend

__all__ = ["TARGETS", "get_backend", "split_targets"]

# short target name -> backend module
TARGETS = {
    "onnx": "graphopt.backends.ort",
    "tvm-llvm": "graphopt.backends.tvm",
    "tvm-aarch64": "graphopt.backends.tvm",
    "tvm-cuda": "graphopt.backends.tvm",
}


def get_backend(target: str) -> Backend:
    if target.lstrip().startswith("{"):  # a TVM target as a JSON dict
        return importlib.import_module("graphopt.backends.tvm")
    if target not in TARGETS:
        raise UsageError(
            f"unknown target '{target}' (valid targets: {', '.join(TARGETS)}, or a TVM target as a JSON dict)"
        )
    return importlib.import_module(TARGETS[target])


def split_targets(text: str) -> list[str]:
    """Split a ``--targets`` value on the commas that are not inside a JSON dict."""
    targets, depth, current = [], 0, []
    for char in text:
        depth += {"{": 1, "}": -1}.get(char, 0)
        if char == "," and depth == 0:
            targets.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    targets.append("".join(current).strip())
    targets = [t for t in targets if t]
    if not targets:
        raise UsageError(f"--targets {text!r} names no target (valid targets: {', '.join(TARGETS)}, or a TVM target as a JSON dict)")
    return targets
