"""Find (and fetch) what running aarch64 TVM code on this x86 machine needs.

    aarch64-linux-gnu-g++     links model.so and builds the runner   (apt: g++-aarch64-linux-gnu)
    qemu-aarch64              runs aarch64 Linux binaries            (apt: qemu-user)
    /usr/aarch64-linux-gnu    the aarch64 glibc/libstdc++ for qemu   (apt: pulled in by the g++)
    aarch64 TVM runtime       libtvm_runtime.so + libtvm_ffi.so and the tvm-ffi headers, taken from
                              PyPI's manylinux aarch64 wheels of the TVM version installed here
                              (the runtime must match the compiler that wrote model.so)

The runtime lives in ``~/.cache/graphopt/aarch64`` (``$GRAPHOPT_AARCH64_HOME`` overrides it).
``python -m graphopt.backends.tvm.edge`` fetches it; ``install_toolchain.sh`` does that
and the apt step.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from graphopt.errors import UnsupportedError

__all__ = [
    "CROSS_CXX",
    "SYSROOT",
    "Toolchain",
    "aarch64_home",
    "fetch_runtime",
    "find_toolchain",
    "host_runtime",
    "toolchain_problems",
]

CROSS_CXX = "aarch64-linux-gnu-g++"
QEMU_NAMES = ("qemu-aarch64", "qemu-aarch64-static")
SYSROOT = Path("/usr/aarch64-linux-gnu")
RUNTIME_LIBS = ("libtvm_runtime.so", "libtvm_ffi.so")
WHEEL_PLATFORM = "manylinux_2_28_aarch64"
INSTALL_HINT = "run backends/tvm/edge/install_toolchain.sh"


@dataclasses.dataclass(frozen=True)
class Toolchain:
    """Everything needed to build the runner for aarch64 and run it under qemu."""

    cxx: str  # the cross C++ compiler
    qemu: str  # the qemu-user binary
    sysroot: Path  # aarch64 glibc and libstdc++ (qemu -L)
    lib_dir: Path  # aarch64 libtvm_runtime.so + libtvm_ffi.so
    include_dir: Path  # tvm-ffi and dlpack headers


def aarch64_home() -> Path:
    """Where the aarch64 TVM runtime and the built runners are cached."""
    return Path(os.environ.get("GRAPHOPT_AARCH64_HOME") or Path.home() / ".cache" / "graphopt" / "aarch64")


def _qemu() -> str | None:
    return next((path for name in QEMU_NAMES if (path := shutil.which(name))), None)


def toolchain_problems() -> list[str]:
    """What is missing to run aarch64 code here (empty when everything is in place)."""
    home = aarch64_home()
    problems = []
    if shutil.which(CROSS_CXX) is None:
        problems.append(f"{CROSS_CXX} (apt-get install g++-aarch64-linux-gnu)")
    if _qemu() is None:
        problems.append("qemu-aarch64 (apt-get install qemu-user)")
    if not (SYSROOT / "lib" / "ld-linux-aarch64.so.1").exists():
        problems.append(f"the aarch64 C library in {SYSROOT} (apt-get install g++-aarch64-linux-gnu)")
    if not all((home / "lib" / lib).exists() for lib in RUNTIME_LIBS) or not (home / "include" / "tvm").is_dir():
        problems.append(f"the aarch64 TVM runtime in {home} (python -m graphopt.backends.tvm.edge)")
    return problems


def find_toolchain() -> Toolchain:
    """The aarch64 toolchain, or an UnsupportedError that says in one line what to install."""
    problems = toolchain_problems()
    if problems:
        raise UnsupportedError(f"running tvm-aarch64 code here needs {'; '.join(problems)}: {INSTALL_HINT}")
    home = aarch64_home()
    return Toolchain(shutil.which(CROSS_CXX), _qemu(), SYSROOT, home / "lib", home / "include")


def host_runtime() -> tuple[list[Path], Path]:
    """(library folders, include folder) of the TVM runtime installed in this Python, for a host runner."""
    import tvm.libinfo  # noqa: PLC0415
    import tvm_ffi.libinfo  # noqa: PLC0415

    lib_dirs = [Path(tvm.libinfo.find_libtvm_runtime()).parent, Path(tvm_ffi.libinfo.find_libtvm_ffi()).parent]
    return list(dict.fromkeys(lib_dirs)), Path(tvm_ffi.libinfo.find_include_path())


def _installed_versions() -> dict[str, str]:
    return {name: importlib.metadata.version(name) for name in ("apache-tvm", "apache-tvm-ffi")}


def fetch_runtime(home: Path | None = None, quiet: bool = True) -> Path:
    """Download the aarch64 wheels of the installed TVM version and extract the runtime libraries and
    headers into ``home`` (default ``aarch64_home()``). Does nothing when they are already there."""
    home = Path(home) if home is not None else aarch64_home()
    versions = _installed_versions()
    stamp = home / "versions.txt"
    wanted = "".join(f"{name}=={version}\n" for name, version in sorted(versions.items()))
    if stamp.exists() and stamp.read_text() == wanted and all((home / "lib" / lib).exists() for lib in RUNTIME_LIBS):
        return home
    wheels = home / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    python_version = f"{sys.version_info.major}.{sys.version_info.minor}"  # tvm-ffi's wheels are per CPython
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--platform", WHEEL_PLATFORM,
               "--python-version", python_version, "-d", str(wheels), *(f"{n}=={v}" for n, v in versions.items())]
    subprocess.run([*command, *(["-q"] if quiet else [])], check=True)

    with tempfile.TemporaryDirectory(dir=home) as staging:
        staging = Path(staging)
        (staging / "lib").mkdir()
        for name, version in versions.items():
            wheel = _find_wheel(wheels, name, version)
            with zipfile.ZipFile(wheel) as archive:
                for member in archive.namelist():
                    if Path(member).name in RUNTIME_LIBS and "/lib/" in member:
                        (staging / "lib" / Path(member).name).write_bytes(archive.read(member))
                    elif member.startswith("tvm_ffi/include/") and not member.endswith("/"):
                        target = staging / "include" / member.removeprefix("tvm_ffi/include/")
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_bytes(archive.read(member))
        missing = [lib for lib in RUNTIME_LIBS if not (staging / "lib" / lib).exists()]
        if missing:
            raise UnsupportedError(f"the aarch64 wheels in {wheels} hold no {missing}; delete the folder and retry")
        for part in ("lib", "include"):  # replace atomically enough for concurrent readers of a complete cache
            shutil.rmtree(home / part, ignore_errors=True)
            (staging / part).rename(home / part)
    stamp.write_text(wanted)
    shutil.rmtree(wheels, ignore_errors=True)  # about 100 MB, and everything needed is extracted
    return home


def _find_wheel(folder: Path, name: str, version: str) -> Path:
    prefix = f"{name.replace('-', '_')}-{version}-"
    found = sorted(p for p in folder.glob("*.whl") if p.name.startswith(prefix) and "aarch64" in p.name)
    if not found:
        raise UnsupportedError(f"pip did not download an aarch64 wheel of {name}=={version} into {folder}")
    return found[-1]


def main() -> int:
    """``python -m graphopt.backends.tvm.edge``: fetch the runtime, then report what is still missing."""
    home = fetch_runtime(quiet=False)
    problems = toolchain_problems()
    print(f"aarch64 TVM runtime: {home / 'lib'}")
    for problem in problems:
        print(f"missing: {problem}")
    return 1 if problems else 0
