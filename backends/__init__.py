"""Backends: turn a rewritten model into something that runs (an artifact).

``onnx`` (ONNX Runtime) is always available; ``tvm-*`` targets arrive with the TVM backend.
Each backend module is imported only when its target is asked for.
"""

from __future__ import annotations

import importlib

from graphopt.errors import UsageError

__all__ = ["TARGETS", "get_backend"]

# target name -> backend module
TARGETS = {"onnx": "graphopt.backends.ort"}


def get_backend(target: str):
    if target not in TARGETS:
        raise UsageError(f"unknown target '{target}' (valid targets: {', '.join(sorted(TARGETS))})")
    return importlib.import_module(TARGETS[target])
