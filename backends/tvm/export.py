"""Write a compiled TVM executable to disk for its target.

Host code links with the system C++ compiler; aarch64 code with Debian's cross g++
(``aarch64-linux-gnu-g++``, package ``g++-aarch64-linux-gnu``); CUDA libraries embed the kernels
nvcc compiled, and the CUDA C source is written next to them.
"""

from __future__ import annotations

import os
import shutil

from graphopt.backends.tvm._log import without_scope_log
from graphopt.errors import UnsupportedError

__all__ = ["AARCH64_CXX", "cuda_source", "export_library"]

AARCH64_CXX = "aarch64-linux-gnu-g++"


def cross_compiler():
    from tvm.support import cc  # noqa: PLC0415 — tvm.contrib.cc moved here in TVM 0.27

    if shutil.which(AARCH64_CXX) is None:
        raise UnsupportedError(
            f"saving an aarch64 build needs {AARCH64_CXX} (apt-get install g++-aarch64-linux-gnu)"
        )
    return cc.cross_compiler(AARCH64_CXX)


def cuda_source(executable) -> str:
    """The CUDA C source of every kernel in ``executable`` (empty when it has none)."""
    sources = []
    for module in _all_modules(executable.mod):
        if module.kind == "cuda":  # TVM 0.27: runtime modules name their kind (no type_key)
            sources.append(module.inspect_source())
    return "\n".join(sources)


def _all_modules(module):
    yield module
    for child in module.imports:
        yield from _all_modules(child)


def export_library(artifact, folder: str) -> list[str]:
    from graphopt.backends.tvm.artifact import CUDA_SOURCE, LIBRARY  # noqa: PLC0415

    if artifact.executable is None:  # loaded from disk: copy what is there
        path = os.path.join(folder, LIBRARY)
        if os.path.abspath(artifact.library_path) != os.path.abspath(path):
            shutil.copyfile(artifact.library_path, path)
        return [path]
    path = os.path.join(folder, LIBRARY)
    written = [path]
    with without_scope_log():
        if artifact.spec.is_aarch64 and not artifact.spec.runs_on_host:
            artifact.executable.export_library(path, fcompile=cross_compiler())
        else:
            artifact.executable.export_library(path)
    if artifact.spec.is_cuda:
        source = os.path.join(folder, CUDA_SOURCE)
        with open(source, "w", encoding="utf-8") as f:
            f.write(cuda_source(artifact.executable))
        written.append(source)
    return written
