"""Quiet a debug line TVM 0.27 leaves in its VM executable (de)serializer."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator

__all__ = ["without_scope_log"]


@contextlib.contextmanager
def without_scope_log() -> Iterator[None]:
    """TVM 0.27 logs one "Scope Loaded:"/"Scope Saving:" warning per constant when it loads or saves an executable (a leftover
    debug line in vm/executable.cc); drop those lines from stderr, keep everything else."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().decode(errors="replace").splitlines(keepends=True) if "Scope Loaded:" not in line and "Scope Saving:" not in line]
            if kept:
                sys.stderr.write("".join(kept))
