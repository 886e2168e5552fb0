"""``python -m graphopt.models.zoo``: --list names every entry once; --build writes a model and inputs that fit it."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

from graphopt.models import zoo
from graphopt.models.zoo.__main__ import main


def test_list_prints_one_line_per_entry(capsys):
    assert main(["--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == zoo.names()
    assert lines[0].split() == ["bert", "text-encoder", "dynamo", "opset", "18", "plain"]


def test_build_writes_the_model_and_inputs_that_run_on_it(tmp_path, capsys):
    assert main(["--build", "bert-legacy17", str(tmp_path)]) == 0
    model = onnx.load(tmp_path / "bert-legacy17.onnx")
    feeds = dict(np.load(tmp_path / "bert-legacy17.inputs.npz"))
    assert sorted(feeds) == sorted(i.name for i in model.graph.input)
    (hidden,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    assert hidden.shape == (1, 16, 64) and np.isfinite(hidden).all()


def test_build_of_an_unknown_name_is_a_usage_error(tmp_path, capsys):
    assert main(["--build", "no-such-model", str(tmp_path)]) == 2
    assert "unknown zoo model" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
