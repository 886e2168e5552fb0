"""The aarch64 edge story: cross-compiled TVM builds run through a small C++ runner.

``tvm-aarch64`` artifacts are exported with Debian's aarch64 g++ (``export.py``); on this x86
machine they run under qemu-user with the aarch64 TVM runtime from PyPI's wheels; on a device the
same runner (``runner/graphopt_run.cc``, see ``runner/README.md``) runs them natively.

    run_with_qemu(artifact, feeds) -> {name: array}     what TvmArtifact.run does for tvm-aarch64
    run_aarch64(artifact, feeds, repeat=N)              the same, with the runner's median latency
    run_with_host_runner(artifact, feeds)               the runner built for this machine (tvm-llvm)
    build_runner("aarch64" | "host") -> path            the runner executable, built once and cached
    find_toolchain() / toolchain_problems()             what is installed, what is missing
    fetch_runtime()                                     download the aarch64 TVM runtime (PyPI wheels)
"""

from __future__ import annotations

from graphopt.backends.tvm.edge.runner import (
    RUNNER_SOURCE,
    RunnerResult,
    build_runner,
    invoke_runner,
    run_aarch64,
    run_with_host_runner,
    run_with_qemu,
)
from graphopt.backends.tvm.edge.toolchain import (
    Toolchain,
    aarch64_home,
    fetch_runtime,
    find_toolchain,
    host_runtime,
    toolchain_problems,
)

__all__ = [
    "RUNNER_SOURCE",
    "RunnerResult",
    "Toolchain",
    "aarch64_home",
    "build_runner",
    "fetch_runtime",
    "find_toolchain",
    "host_runtime",
    "invoke_runner",
    "run_aarch64",
    "run_with_host_runner",
    "run_with_qemu",
    "toolchain_problems",
]
