"""Optional MetaSchedule tuning (``tune_budget``): records saved with the artifact, reused without tuning.

One real tuning run of a few trials (slow: MetaSchedule starts builder and runner processes that
import TVM; ~1-3 minutes on 2 cores), then a compile that applies the saved database.
"""

from __future__ import annotations

import numpy as np
import onnx.helper as oh
import onnx_ir as ir
import pytest
from onnx import TensorProto, numpy_helper

pytest.importorskip("tvm")

from graphopt.backends import tvm as tvm_backend  # noqa: E402
from graphopt.backends.tvm import tune  # noqa: E402
from graphopt.backends.tvm.targets import resolve  # noqa: E402
from graphopt.errors import UnsupportedError  # noqa: E402


def _mlp():
    rng = np.random.default_rng(0)
    w1, w2 = rng.standard_normal((64, 128)).astype(np.float32), rng.standard_normal((128, 32)).astype(np.float32)
    graph = oh.make_graph(
        [oh.make_node("MatMul", ["x", "w1"], ["h"]), oh.make_node("Relu", ["h"], ["r"]), oh.make_node("MatMul", ["r", "w2"], ["y"])],
        "mlp",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, [8, 64])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, [8, 32])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    model = ir.serde.deserialize_model(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]))
    feeds = {"x": rng.standard_normal((8, 64)).astype(np.float32)}
    return model, feeds, np.maximum(feeds["x"] @ w1, 0) @ w2


def test_tuning_needs_a_target_that_runs_here(tmp_path):
    with pytest.raises(UnsupportedError, match="does not run here"):
        tune.tune(None, resolve("tvm-aarch64"), str(tmp_path), trials=4)


@pytest.mark.slow
def test_tuning_records_are_saved_and_reused(tmp_path):
    model, feeds, expected = _mlp()
    tuned = tvm_backend.compile(model, target="tvm-llvm", example_inputs=feeds, tune_budget=2)
    assert tuned.details["tune_trials"] == 2 and tuned.details["tune_seconds"] > 0
    np.testing.assert_allclose(tuned.run(feeds)["y"], expected, rtol=1e-4, atol=1e-3)
    folder = tmp_path / "artifact"
    tuned.save(str(folder))
    records = (folder / "tuning" / "database_tuning_record.json").read_text().strip().splitlines()
    assert records, "tuning saved no record"

    reused = tvm_backend.compile(model, target="tvm-llvm", example_inputs=feeds, tune_database=str(folder / "tuning"))
    assert reused.details["tune_seconds"] < 5  # applied, not tuned again
    np.testing.assert_allclose(reused.run(feeds)["y"], expected, rtol=1e-4, atol=1e-3)
    loaded = tvm_backend.load(str(folder))
    assert loaded.tuning_dir is not None
    np.testing.assert_allclose(loaded.run(feeds)["y"], expected, rtol=1e-4, atol=1e-3)
