"""What a wheel holds: every package folder is listed in pyproject.toml (the top-level folders map
onto ``graphopt.*``, so setuptools cannot find them itself), and the list builds a working install."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _package_folders() -> set[str]:
    config = _config()
    found = set()
    for package, folder in config["package-dir"].items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            relative = init.parent.relative_to(base)
            found.add(".".join([package, *relative.parts]) if relative.parts else package)
    return found


def test_every_package_folder_is_listed():
    assert set(_config()["packages"]) == _package_folders()


@pytest.mark.slow
def test_the_wheel_holds_every_module_and_the_edge_runner(tmp_path):
    source = tmp_path / "src"  # a copy: setuptools' build/ folder in the checkout could hold moved-away files
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__", "out", ".hypothesis"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(source)],
                   check=True, capture_output=True)
    wheel = next(tmp_path.glob("graphopt-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for must in ("graphopt/ops/shiftmax.py", "graphopt/backends/tvm/cpu/x86/vnni_matmul.py", "graphopt/backends/tvm/kernels/silu.py",
                 "graphopt/passes/static_shapes.py", "graphopt/models/zoo/__init__.py", "graphopt/bench/zoo.py",
                 "graphopt/backends/tvm/edge/runner/graphopt_run.cc", "graphopt/backends/tvm/edge/install_toolchain.sh"):
        assert must in names, must
