"""Calibration/validation data as users have it: dicts, a bare array, tuples in input order, ORT's
CalibrationDataReader."""

from __future__ import annotations

import numpy as np
import onnx.parser
import pytest
from onnxruntime.quantization import CalibrationDataReader

import graphopt
from graphopt import data
from graphopt.errors import DataError

TWO_INPUTS = """
<ir_version: 8, opset_import: ["" : 17]>
two (float[2, 3] a, float[2, 3] b) => (float[2, 3] y) { y = Add(a, b) }
"""


def _rng_array(seed: int, shape=(2, 4)) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_bare_array_for_a_one_input_model(mlp_proto):
    model = graphopt.load(mlp_proto)
    assert len(data.load_samples(_rng_array(0), model)) == 1
    assert len(data.load_samples(np.stack([_rng_array(i) for i in range(3)]), model)) == 3  # stacked over samples
    assert len(data.load_samples([_rng_array(i) for i in range(2)], model)) == 2
    result = graphopt.compile(mlp_proto, passes="cleanup", calib=_rng_array(0))
    assert result.report.data["kind"] == "user" and result.report.data["samples"] == 1


def test_tuples_in_input_order_and_their_errors():
    model = graphopt.load(onnx.parser.parse_model(TWO_INPUTS))
    samples = data.load_samples([(_rng_array(1, (2, 3)), _rng_array(2, (2, 3)))], model)
    assert set(samples[0]) == {"a", "b"}
    with pytest.raises(DataError, match="holds 1 arrays, the model has 2 inputs"):
        data.load_samples([(_rng_array(1, (2, 3)),)], model)
    with pytest.raises(DataError, match="one-input model"):
        data.load_samples(_rng_array(1, (2, 3)), model)


def test_onnxruntime_calibration_data_reader(mlp_proto):
    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"x": _rng_array(i)} for i in range(5)])

        def get_next(self):
            return next(self.items, None)

    samples = data.load_samples(Reader(), graphopt.load(mlp_proto))
    assert len(samples) == 5 and samples[4]["x"].shape == (2, 4)
