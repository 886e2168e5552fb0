"""Capture what native (C/C++) code writes to a file descriptor: Python's ``redirect_stdout`` does
not see it. Used to keep TVM's and the exporters' leftover prints off the user's terminal."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator

__all__ = ["captured_fd"]


@contextlib.contextmanager
def captured_fd(fd: int) -> Iterator[list[str]]:
    """Send file descriptor ``fd`` (1 or 2) to a temporary file for the block; the yielded list holds
    the captured text once the block ends. Without a real descriptor (embedded interpreters) nothing
    is captured and the list stays empty."""
    captured: list[str] = []
    stream = sys.stdout if fd == 1 else sys.stderr
    try:
        stream.flush()
        saved = os.dup(fd)
    except (OSError, ValueError):
        yield captured
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), fd)
        try:
            yield captured
        finally:
            stream.flush()
            os.dup2(saved, fd)
            os.close(saved)
            sink.seek(0)
            captured.append(sink.read().decode(errors="replace"))
