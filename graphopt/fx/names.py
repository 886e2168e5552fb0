"""Python-safe names for ONNX value names (graph inputs become ``forward`` keywords, initializers
module attributes): ``[A-Za-z0-9_]`` kept, every other character ``_``, a leading digit or a
Python keyword prefixed with ``v_``, clashes numbered (``_1``, ``_2``, ...)."""

from __future__ import annotations

import keyword
import re

__all__ = ["SafeNames"]


class SafeNames:
    """Hands out unique identifiers; the same ONNX name asked twice gets the same answer."""

    def __init__(self, reserved: set[str] | None = None) -> None:
        self._taken = set(reserved or ())
        self._given: dict[str, str] = {}

    def __call__(self, onnx_name: str) -> str:
        if onnx_name in self._given:
            return self._given[onnx_name]
        base = re.sub(r"\W", "_", onnx_name, flags=re.ASCII) or "v"
        if base[0].isdigit() or keyword.iskeyword(base):
            base = f"v_{base}"
        name, count = base, 0
        while name in self._taken:
            count += 1
            name = f"{base}_{count}"
        self._taken.add(name)
        self._given[onnx_name] = name
        return name
