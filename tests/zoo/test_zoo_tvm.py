"""The zoo's tvm-llvm column as tests: graphopt's TVM code against ONNX Runtime on the same model.

FP32 (``canonicalize``), every dynamo export and every arrival form, and legacy BERT/ViT exports: cosine >= 0.9999 and max abs <= 1e-3 of the output's scale (1e-2 for
float16 models). ``ivit`` on one model per family, the decode graph and the quantized arrival forms:
outputs of the integer region bit for bit, float tails within rounding (``bench.zoo.tvm_row``).
``python -m bench.zoo --tvm`` runs the column on every entry.
"""

from __future__ import annotations

import pytest

from bench import zoo as matrix
from graphopt.models import zoo

ENTRIES = zoo.entries()
# legacy exports: their attention masks are Shape/Expand arithmetic that only folds once shapes are static
FP32 = [n for n, e in ENTRIES.items() if e.exporter == "dynamo" or e.form != "plain"] + ["bert-legacy14", "bert-legacy17", "vit-legacy17"]
IVIT = ["bert", "distilbert", "deberta-v2", "gpt2", "llama", "llama-decode", "gemma", "vit", "beit", "swin",
        "wav2vec2", "bert-int8-dql", "vit-qdq", "minilm-qdq", "minilm-int8-castmul", "bert-fp16"]


def _built(name: str):
    try:
        ENTRIES[name].build()
    except zoo.ExportUnsupported as e:
        pytest.skip(f"exporter limit, recorded in the zoo table: {e}")
    return ENTRIES[name]


@pytest.mark.slow
@pytest.mark.parametrize("name", FP32)
def test_tvm_llvm_matches_ort_in_fp32(name):
    row = matrix.tvm_row(_built(name))
    assert row["tvm_ok"], f"cosine {row['tvm_cosine']}, max abs / scale {row['tvm_scaled_max_abs']:.2e}"


@pytest.mark.slow
@pytest.mark.parametrize("name", IVIT)
def test_tvm_llvm_runs_ivit_exactly(name):
    row = matrix.tvm_row(_built(name), "ivit")
    assert row["tvm_ok"], f"cosine vs ORT {row['tvm_cosine']}, max abs / scale {row['tvm_scaled_max_abs']:.2e}"
