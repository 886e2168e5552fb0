"""tvm-llvm vs ONNX Runtime on the zoo's architectures at their published sizes (random weights,
MiniLM with its real ones): parity, speed, compile seconds; FP32 and ``ivit``.

    python -m bench.zoo --targets tvm-llvm [--only bert-base resnet-50 ...] [--no-ivit] [--runs 10] [--json out.json]

Per model, all timed interleaved in one run (2 threads, batch 1, median):
- FP32: ORT FP32 (all graph optimizations) vs graphopt ``tvm-llvm`` on the same model, no tuning run;
  parity of the outputs (cosine, max abs) and the compile seconds (import + build).
- ``ivit`` (transformers): the integer-only model on ``tvm-llvm`` vs ORT ``quantize_dynamic`` int8
  on the original (ORT's own int8), and bit-exactness of TVM vs ORT running the same integer graph.
Ratios above 1 mean faster than the baseline. Models are exported once (legacy exporter, opset 17)
(decoders: dynamo, opset 18) and cached like the zoo's.
"""

from __future__ import annotations

import dataclasses
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TVM_NUM_THREADS", "2")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnx_ir as ir  # noqa: E402

from ._timing import interleaved_medians  # noqa: E402

THREADS = 2
SEQ = 128
IMAGE = 224
CALIB_SAMPLES = 4


@dataclasses.dataclass(frozen=True)
class Model:
    name: str
    model_class: str  # transformers class ("" for MiniLM, built by graphopt.models.minilm)
    config: dict
    inputs: str  # text, image, ids, decode
    output: str
    transformer: bool = True
    exporter: str = "legacy"  # opset 17; decoders go through dynamo (opset 18): the legacy exporter lacks aten::diff


MODELS = [
    Model("bert-base", "BertModel", {}, "text", "last_hidden_state"),
    Model("minilm", "", {}, "text", "last_hidden_state"),
    Model("vit-s16", "ViTModel", {"hidden_size": 384, "num_attention_heads": 6, "intermediate_size": 1536}, "image", "last_hidden_state"),
    Model("vit-b16", "ViTModel", {}, "image", "last_hidden_state"),
    Model("resnet-50", "ResNetModel", {}, "image", "pooler_output", transformer=False),
    Model("mobilenet-v2", "MobileNetV2Model", {}, "image", "pooler_output", transformer=False),
    Model("convnext-t", "ConvNextModel", {}, "image", "pooler_output", transformer=False),
    Model("gpt2-prefill", "GPT2LMHeadModel", {}, "ids", "logits", exporter="dynamo"),
    Model("gpt2-decode", "GPT2LMHeadModel", {}, "decode", "logits", exporter="dynamo"),
]


def sample(model: Model, config, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    if model.inputs == "image":
        return {"pixel_values": rng.standard_normal((1, 3, IMAGE, IMAGE)).astype(np.float32)}
    ids = rng.integers(1000, 20000, size=(1, SEQ if model.inputs != "decode" else 1), dtype=np.int64)
    if model.inputs == "ids":
        return {"input_ids": ids}
    if model.inputs == "decode":
        from graphopt.models.zoo.recipes import cache_names  # noqa: PLC0415

        head_dim = config.n_embd // config.n_head
        past = {n: rng.standard_normal((1, config.n_head, SEQ - 1, head_dim)).astype(np.float32)
                for n in cache_names(config.n_layer, "past")}
        return {"input_ids": ids, **past}
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


def build(model: Model) -> tuple[onnx.ModelProto, list[dict]]:
    """The exported model and seeded samples (the first is what is timed)."""
    if not model.model_class:
        from graphopt.models import minilm  # noqa: PLC0415

        tokens = minilm.tokenize(minilm.sentences()[:CALIB_SAMPLES + 1], seq_len=SEQ)
        return minilm.build(exporter="legacy", opset=17), [{k: v[i:i + 1] for k, v in tokens.items()} for i in range(CALIB_SAMPLES + 1)]
    import transformers  # noqa: PLC0415

    from graphopt.models import _export  # noqa: PLC0415
    from graphopt.models.zoo import recipes  # noqa: PLC0415

    config = getattr(transformers, model.model_class.replace("Model", "Config").replace("LMHeadConfig", "Config"))(**model.config)
    samples = [sample(model, config, seed) for seed in range(CALIB_SAMPLES + 1)]

    def produce() -> bytes:
        import torch  # noqa: PLC0415

        torch.manual_seed(0)
        inner = getattr(transformers, model.model_class)(config).eval()
        if model.inputs == "decode":
            module, outputs = recipes.decoder_step(inner, config.n_layer), ["logits", *[n.replace("past", "present") for n in list(samples[0])[1:]]]
        elif model.inputs == "ids":
            module, outputs = recipes.decoder_prefill(inner), ["logits"]
        else:
            module, outputs = recipes.encoder(inner, list(samples[0]), model.output), [model.output]
        return _export.export(module, samples[0], outputs, exporter=model.exporter, opset=17 if model.exporter == "legacy" else 18)

    key = {"model": model.name, "config": model.config, "inputs": model.inputs, "seq": SEQ, "image": IMAGE, "exporter": model.exporter}
    return _export.cached(f"bench-zoo-{model.name}", key, produce), samples


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    denominator = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denominator) if denominator else float(np.array_equal(a, b))


def fp32_row(model: Model, proto: onnx.ModelProto, feeds: dict, runs: int) -> tuple[dict, dict]:
    from .tvm import _ort_runner, _tvm_runner  # noqa: PLC0415
    from graphopt.backends import tvm as tvm_backend  # noqa: PLC0415

    started = time.perf_counter()
    artifact = tvm_backend.compile(ir.serde.deserialize_model(proto), target="tvm-llvm", threads=THREADS, example_inputs=feeds)
    compile_s = time.perf_counter() - started
    ort_run, session = _ort_runner(proto, feeds)
    expected, got = session.run(None, feeds)[0], artifact.run(feeds)[artifact.outputs[0].name]
    medians = interleaved_medians({"ort": ort_run, "tvm": _tvm_runner(artifact, feeds)}, runs)
    row = {"model": model.name, "variant": "fp32", "ort_ms": medians["ort"], "tvm_ms": medians["tvm"],
           "speed": medians["ort"] / medians["tvm"], "cosine": _cosine(expected, got),
           "max_abs": float(np.abs(expected - got).max()), "compile_s": compile_s}
    return row, {"ort-fp32": ort_run}


def ivit_row(model: Model, proto: onnx.ModelProto, samples: list[dict], runs: int, ort_fp32) -> dict:
    import graphopt  # noqa: PLC0415
    from .ivit import _dynamic_int8  # noqa: PLC0415
    from .tvm import _ort_runner, _tvm_runner  # noqa: PLC0415
    from graphopt.backends import ort as ort_backend  # noqa: PLC0415

    feeds = samples[0]
    started = time.perf_counter()
    result = graphopt.compile(proto, "ivit", calib=samples[1:], targets=["tvm-llvm"], validate=False)
    seconds = time.perf_counter() - started
    artifact = result.artifacts["tvm-llvm"]
    exact = ort_backend.make_session(result.model.clone(), optimization="disable", threads=THREADS)
    expected, got = ort_backend.run(exact, feeds), artifact.run(feeds)
    bit_exact = all(np.array_equal(expected[k], got[k]) for k in expected)
    ort_dynamic, _ = _ort_runner(_dynamic_int8(proto), feeds)
    medians = interleaved_medians({"ort-fp32": ort_fp32, "ort-dynamic": ort_dynamic, "tvm-ivit": _tvm_runner(artifact, feeds)}, runs)
    return {"model": model.name, "variant": "ivit", "ort_ms": medians["ort-dynamic"], "tvm_ms": medians["tvm-ivit"],
            "speed": medians["ort-dynamic"] / medians["tvm-ivit"], "vs_ort_fp32": medians["ort-fp32"] / medians["tvm-ivit"],
            "bit_exact": bit_exact, "compile_s": seconds}


COLUMNS = [("model", 14), ("variant", 8), ("ort ms", 9), ("tvm ms", 9), ("speed", 7), ("parity", 22), ("compile s", 10)]


def line(row: dict) -> str:
    if "error" in row:
        return f"{row['model']:<14}{row['variant']:<8}error: {row['error']}"
    parity = f"cos {row['cosine']:.6f} {row['max_abs']:.1e}" if "cosine" in row else ("bit-exact" if row.get("bit_exact") else "NOT bit-exact")
    return (f"{row['model']:<14}{row['variant']:<8}{row['ort_ms']:>9.2f}{row['tvm_ms']:>9.2f}{row['speed']:>6.2f}x "
            f"{parity:<22}{row['compile_s']:>9.1f}")


def run(only: list[str] | None, ivit: bool, runs: int) -> list[dict]:
    """Every model's rows (printed as they come); a model that fails is a row with its error."""
    print("".join(f"{header:<{width}}" for header, width in COLUMNS) + "   (speed: FP32 vs ORT FP32; ivit vs ORT quantize_dynamic)")
    rows = []
    for model in MODELS:
        if only and model.name not in only:
            continue
        try:
            proto, samples = build(model)
            row, baselines = fp32_row(model, proto, samples[0], runs)
            rows.append(row)
            print(line(row), flush=True)
            if ivit and model.transformer:
                rows.append(ivit_row(model, proto, samples, runs, baselines["ort-fp32"]))
                print(line(rows[-1]), flush=True)
        except Exception as e:  # noqa: BLE001 — one model's failure is a row, the rest still run
            rows.append({"model": model.name, "variant": "-", "error": f"{type(e).__name__}: {str(e).strip()[:200]}"})
            print(line(rows[-1]), flush=True)
    summarize(rows)
    return rows


def summarize(rows: list[dict]) -> None:
    for variant, what in (("fp32", "tvm-llvm FP32 vs ORT FP32"), ("ivit", "ivit tvm-llvm vs ORT quantize_dynamic")):
        speeds = [r["speed"] for r in rows if r.get("variant") == variant and "speed" in r]
        if speeds:
            print(f"{what}: geometric mean {float(np.exp(np.mean(np.log(speeds)))):.2f}x, min {min(speeds):.2f}x over {len(speeds)} models")
