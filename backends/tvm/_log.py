"""Keep TVM's C++ log off the user's terminal: its lines go to the debug log.

TVM's C++ code writes ``LOG(WARNING)`` lines straight to stderr, where Python's logging cannot see
them: "[21:06:35] .../topi/transform.h:1261: Warning: Fast mode segfaults when there are
out-of-bounds indices..." once per embedding ``Gather`` a build legalizes, and TVM 0.27 leaves one
"Scope Loaded:"/"Scope Saving:" line per constant when it loads or saves an executable.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from collections.abc import Iterator

from graphopt.native_output import captured_fd

__all__ = ["is_tvm_log_line", "tvm_log_to_debug", "without_scope_log"]

logger = logging.getLogger(__name__)

# TVM's C++ log prefix: "[HH:MM:SS] <source file>:<line>: " (dmlc-style), then the level and message.
_TVM_LOG_LINE = re.compile(r"^\[\d\d:\d\d:\d\d\] \S+:\d+: ")
_SCOPE_LINES = ("Scope Loaded:", "Scope Saving:")


def is_tvm_log_line(line: str) -> bool:
    return bool(_TVM_LOG_LINE.match(line)) or any(marker in line for marker in _SCOPE_LINES)


@contextlib.contextmanager
def tvm_log_to_debug() -> Iterator[None]:
    """Capture stderr (the file descriptor: C++ writes bypass ``sys.stderr``) for the block; TVM's
    log lines go to this module's logger at debug level (the scope lines are dropped), everything
    else goes back to stderr when the block ends, also when it raises."""
    captured: list[str] = []
    try:
        with captured_fd(2) as captured:
            yield
    finally:
        kept = []
        for line in "".join(captured).splitlines(keepends=True):
            if any(marker in line for marker in _SCOPE_LINES):
                continue
            if _TVM_LOG_LINE.match(line):
                logger.debug("tvm: %s", line.rstrip())
            else:
                kept.append(line)
        if kept:
            sys.stderr.write("".join(kept))


without_scope_log = tvm_log_to_debug  # the executable (de)serializers' name for it (export.py, artifact.py)
