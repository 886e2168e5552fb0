"""stdlib-llama: shipped weights, held-out perplexity equal in torch and ONNX, KV-cache decode equal to
prefill, a fixed corpus split, deterministic training."""

from __future__ import annotations

import numpy as np
import pytest

from graphopt import models, testing
from graphopt.models import stdlib_corpus, stdlib_llama, stdlib_llama_train


def _torch_runner(net):
    import torch

    def run(inputs):
        with torch.no_grad():
            return net(**{k: torch.from_numpy(v) for k, v in inputs.items()})

    return run


def _session(proto):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def test_weights_ship_as_float16_under_5_mb_with_their_provenance():
    assert stdlib_llama.WEIGHTS.stat().st_size <= 5 * 2**20
    with np.load(stdlib_llama.WEIGHTS) as w:
        weights = [k for k in w.files if not k.startswith(stdlib_llama.META)]
        assert weights and all(w[k].dtype == np.float16 for k in weights)
    meta = stdlib_llama.metadata()
    assert {"python", "corpus_sha256", "seed", "steps", "held_out_loss", "unigram_held_out_loss"} <= set(meta)
    assert float(meta["held_out_loss"]) < float(meta["unigram_held_out_loss"]) - 1.0  # learned, not unigram


def test_onnx_held_out_perplexity_equals_torch_and_beats_unigram(check):
    proto = stdlib_llama.build()
    testing.assert_valid(proto)
    via_torch = stdlib_llama.perplexity(_torch_runner(stdlib_llama.module()), count=4, batch=2)
    via_callable = stdlib_llama.perplexity(lambda inputs: testing.run_ort(proto, inputs), count=4, batch=2)
    via_session = stdlib_llama.perplexity(_session(proto), count=4, batch=4)
    assert via_callable == pytest.approx(via_torch, rel=1e-4)
    assert via_session == pytest.approx(via_torch, rel=1e-4)
    tokens = stdlib_llama.windows("held-out", 4, stdlib_llama.ARCH["context"])
    unigram = np.exp(stdlib_corpus.unigram_nats(tokens[:, 1:]))
    assert via_torch < unigram / 3


def test_decode_graph_continues_the_prefill_graph(check):
    """Two decode steps through ONNX Runtime, the cache fed back, give prefill's next-token logits."""
    prefill, decode = stdlib_llama.build(graph="prefill"), stdlib_llama.build(graph="decode")
    tokens = stdlib_llama.windows("held-out", 2, 12)
    inputs = stdlib_llama.example_inputs(graph="decode", seq_len=9)  # cache layout and names
    past = {k: v for k, v in inputs.items() if k.startswith("past_")}
    past |= dict(zip(past, _torch_cache(tokens[:, :10])))
    expected = testing.run_ort(prefill, {"input_ids": tokens})[0]
    for position in (10, 11):
        outputs = testing.run_ort(decode, {"input_ids": tokens[:, position : position + 1], **past})
        np.testing.assert_allclose(outputs[0][:, 0], expected[:, position], rtol=0, atol=1e-4)
        past = dict(zip(past, outputs[1:]))
        assert next(iter(past.values())).shape[2] == position + 1


def _torch_cache(prompt):
    import torch

    with torch.no_grad():
        cache = stdlib_llama.lm()(input_ids=torch.from_numpy(prompt), use_cache=True).past_key_values
    return [t.numpy() for layer in cache.layers for t in (layer.keys, layer.values)]


def test_decode_graph_matches_torch(check):
    proto = check.matches_torch(stdlib_llama, {"graph": "decode"}, {"batch": 1, "seq_len": 5})
    names = [f"{kind}_{i}" for i in range(4) for kind in ("key", "value")]
    assert [i.name for i in proto.graph.input] == ["input_ids", *(f"past_{n}" for n in names)]
    assert [o.name for o in proto.graph.output] == ["logits", *(f"present_{n}" for n in names)]


def test_the_split_is_by_file_and_fixed():
    files = stdlib_corpus.files()
    held_out = [f for f in files if stdlib_corpus.is_held_out(f)]
    assert 0.05 < len(held_out) / len(files) < 0.15
    assert files == sorted(files) and not any("/test/" in f or f.startswith("test/") for f in files)
    # every file starts with BOS, in its own split only
    assert np.count_nonzero(stdlib_corpus.split("held-out") == stdlib_corpus.BOS) == len(held_out)
    assert np.count_nonzero(stdlib_corpus.split("train") == stdlib_corpus.BOS) == len(files) - len(held_out)
    with pytest.raises(ValueError, match="held-out"):
        stdlib_corpus.split("test")


def test_calibration_samples_are_train_windows_and_repeatable():
    a, b = stdlib_llama.calibration_samples(3, seq_len=32), stdlib_llama.calibration_samples(3, seq_len=32)
    assert [s["input_ids"].shape for s in a] == [(1, 32)] * 3
    assert all(np.array_equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, b))
    train = stdlib_corpus.split("train").tobytes()  # int64 stream: a window is a contiguous run of it
    assert all(s["input_ids"][0].tobytes() in train for s in a)


def test_registered_with_a_working_config_check():
    assert models.get_model("stdlib_llama") is stdlib_llama
    with pytest.raises(TypeError, match="layerz"):
        stdlib_llama.example_inputs(layerz=3)
    with pytest.raises(ValueError, match="seed 0"):
        stdlib_llama.module(seed=1)


def test_training_is_deterministic(check):
    a, b = (stdlib_llama_train.train(seed=1, steps=2, batch=2).state_dict() for _ in range(2))
    shipped = stdlib_llama.lm().state_dict()
    assert a.keys() == shipped.keys()
    for k in a:
        assert a[k].shape == shipped[k].shape and a[k].equal(b[k]), k


def test_another_standard_library_is_named_in_a_warning(check, monkeypatch):
    monkeypatch.setattr(stdlib_corpus, "digest", lambda: "0" * 64)
    with pytest.warns(UserWarning, match=f"Python {stdlib_llama.metadata()['python']}.*held-out perplexity"):
        stdlib_llama.lm()
