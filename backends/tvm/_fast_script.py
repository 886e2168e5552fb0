"""Make TVMScript's ``T.prim_func`` cheap to evaluate when a large program (torch) is loaded.

``T.prim_func`` calls ``inspect.stack()``, which asks ``inspect.getmodule`` for the module of every
frame whose file does not exist (TVMScript's own ``<ast>`` frames): a scan of all of ``sys.modules``
per frame. Importing ``tvm.s_tir.tensor_intrin.cuda`` parses hundreds of prim_funcs; with torch
imported (thousands of modules) that took 240 s of a 243 s MiniLM CUDA compile, 2 s without.
TVMScript only reads each frame and its one line of code context, which ``linecache`` gives
without the module scan.
"""

from __future__ import annotations

import contextlib
import inspect
import linecache
import sys
from collections.abc import Iterator

__all__ = ["fast_tvmscript_parsing"]


def _stack(context: int = 1) -> list[inspect.FrameInfo]:
    frames = []
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        line = linecache.getline(code.co_filename, frame.f_lineno, frame.f_globals) if context > 0 else ""
        frames.append(inspect.FrameInfo(frame, code.co_filename, frame.f_lineno, code.co_name,
                                        [line] if line else None, 0 if line else None))
        frame = frame.f_back
    return frames


@contextlib.contextmanager
def fast_tvmscript_parsing() -> Iterator[None]:
    """Within the block, ``inspect.stack`` skips the per-frame module scan (see the module docstring)."""
    original = inspect.stack
    inspect.stack = _stack
    try:
        yield
    finally:
        inspect.stack = original
