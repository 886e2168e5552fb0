"""`graphopt finetune` under torchrun: 2 processes (gloo, CPU) on the same global batch give one
process's loss curve and weights, within float tolerance (gradients averaged in another order)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import onnx
import pytest

import graphopt

TORCHRUN = pathlib.Path(sys.executable).with_name("torchrun")


def _files(folder: pathlib.Path, teacher: onnx.ModelProto) -> list[str]:
    onnx.save(teacher, folder / "teacher.onnx")
    for tensor in teacher.graph.initializer:  # the student: the teacher with disturbed weights
        array = onnx.numpy_helper.to_array(tensor)
        tensor.CopyFrom(onnx.numpy_helper.from_array(array + 0.3 * np.random.default_rng(1).standard_normal(array.shape).astype(np.float32), tensor.name))
    onnx.save(teacher, folder / "student.onnx")
    np.savez(folder / "train.npz", x=np.random.default_rng(0).standard_normal((64, 4)).astype(np.float32))
    return ["finetune", "student.onnx", "--teacher", "teacher.onnx", "--data", "train.npz", "--steps", "6", "--lr", "1e-2",
            "--batch-size", "8", "--min-cosine", "0", "--quiet"]


@pytest.mark.slow
@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this Python")
def test_two_processes_give_one_process_loss_curve(tmp_path, mlp_proto):
    args = _files(tmp_path, mlp_proto)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for command in ([sys.executable, "-m", "graphopt", *args, "-o", "one"],
                    [str(TORCHRUN), "--nproc_per_node", "2", "--standalone", "-m", "graphopt", *args, "-o", "two"]):
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stderr[-2000:]
    one, two = (json.loads((tmp_path / name / "report.json").read_text())["data"]["finetune"] for name in ("one", "two"))
    assert (one["world_size"], two["world_size"]) == (1, 2)
    np.testing.assert_allclose(two["loss_curve"], one["loss_curve"], rtol=1e-5)
    weights = [{n: v.const_value.numpy() for n, v in graphopt.load(str(tmp_path / name / "model.onnx")).graph.initializers.items()}
               for name in ("one", "two")]
    for name, array in weights[0].items():
        np.testing.assert_allclose(weights[1][name], array, rtol=1e-5, atol=1e-6)
    assert sorted(os.listdir(tmp_path / "two")) == sorted(os.listdir(tmp_path / "one"))  # rank 0 wrote, once
