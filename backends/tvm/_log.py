"""Quiet a debug line TVM 0.27 leaves in its VM executable (de)serializer."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from graphopt.native_output import captured_fd

__all__ = ["without_scope_log"]


@contextlib.contextmanager
def without_scope_log() -> Iterator[None]:
    """TVM 0.27 logs one "Scope Loaded:"/"Scope Saving:" warning per constant when it loads or saves an executable (a leftover
    debug line in vm/executable.cc); drop those lines from stderr, keep everything else."""
    captured: list[str] = []
    try:
        with captured_fd(2) as captured:
            yield
    finally:
        text = "".join(captured)
        kept = [line for line in text.splitlines(keepends=True) if "Scope Loaded:" not in line and "Scope Saving:" not in line]
        if kept:
            sys.stderr.write("".join(kept))
