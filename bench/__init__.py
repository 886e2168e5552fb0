"""The benchmarks behind the README's numbers, installed as ``graphopt.bench``.

    graphopt bench --list                      # names, what each measures, the extras it needs
    graphopt bench tvm --runs 60 --cross       # one benchmark; options after the names go to each
    graphopt bench                             # DEFAULT: what `make bench` runs

Each benchmark is a module with a command line of its own, run in a fresh interpreter
(``python -m graphopt.bench.<module>``, or ``python -m bench.<module>`` in a checkout), and prints
its ratios against a baseline timed in the same run, on this host. Only the standard library is
imported here, so ``--list`` answers without torch or TVM.
"""

from __future__ import annotations

import dataclasses
import importlib.util

__all__ = ["BENCHMARKS", "DEFAULT", "EXTRAS", "Benchmark", "missing_extras"]

# pyproject's optional dependencies: extra -> the modules it provides
EXTRAS = {"torch": ("torch", "transformers"), "tvm": ("tvm",)}


@dataclasses.dataclass(frozen=True)
class Benchmark:
    name: str
    module: str  # a module of this package
    summary: str
    needs: tuple[str, ...] = ()  # extras (EXTRAS keys)
    args: tuple[str, ...] = ()  # arguments always given to the module

    def argv(self, package: str = __name__) -> list[str]:
        return ["-m", f"{package}.{self.module}", *self.args]


BENCHMARKS = {b.name: b for b in (
    Benchmark("overhead", "overhead", "graphopt's own cost: load + canonicalize + save of a BERT-large-sized graph (time, peak RSS)"),
    Benchmark("minilm-canonical", "minilm_canonical", "all-MiniLM-L6-v2 canonicalized across exporters: fused ops, cosine, max abs",
              ("torch",)),
    Benchmark("ivit", "ivit", "integer-only MiniLM and digits ViT: accuracy, ORT latency vs FP32 and quantize_dynamic", ("torch",)),
    Benchmark("tvm", "tvm", "tvm-llvm vs ONNX Runtime on MiniLM, FP32 and ivit: speed, exactness, compile times (--cross: "
              "also aarch64, CUDA)", ("torch", "tvm")),
    Benchmark("tvm-conv", "tvm_conv", "tvm-llvm vs ONNX Runtime FP32 on conv nets (DBNet-like, SVTR-like, ResNet-ish)", ("torch", "tvm")),
    Benchmark("zoo", "zoo", "26 Hugging Face architectures: canonicalize, ivit integer-only, ORT optimization levels", ("torch",)),
    Benchmark("zoo-tvm", "zoo", "the zoo at published sizes on tvm-llvm vs ONNX Runtime: parity, speed, compile seconds",
              ("torch", "tvm"), ("--targets", "tvm-llvm")),
    Benchmark("check-zoo", "check_zoo", "graphopt check on every zoo model: unchanged holds; a removed pass, a tightened tolerance, a "
              "slower target fail naming the field; JUnit; HTML in Chromium (--browser)", ("torch",)),
    Benchmark("sparsity", "sparsity", "activation thresholding (cats, teal, ...) on the trained stdlib-llama decoder: achieved "
              "sparsity and held-out perplexity at 30/50/70% vs dense", ("torch",)),
    Benchmark("sparsity-kernel", "sparsity_kernel", "decode step of a LLaMA-7B-shaped MLP on tvm-llvm: dense vs CATS vs TEAL "
              "with the sparse kernels, speedup vs sparsity 0-90% and the crossover", ("tvm",)),
    Benchmark("sparsity-decode", "sparsity", "end-to-end decode of the trained stdlib-llama on tvm-llvm: one step and a "
              "KV-cache loop of 64 tokens, cats/teal at 50% vs dense, tokens/s", ("torch", "tvm"), ("--decode",)),
    Benchmark("attention", "attention", "one attention layer (12 heads x 64) vs N 512-16K: softmax (graphopt's TVM kernel, ORT) vs "
              "LinearizedAttention's CPU kernels: latency, log-log slope, peak RSS, decode step vs context, PNG plot", ("tvm",)),
    Benchmark("linear-decode", "linear_decode", "decode step vs context 128-16K: recurrent linear-attention state vs "
              "linear over the KV cache vs softmax KV cache (one 12x64 layer on ORT and tvm-llvm; stdlib-llama on ORT), "
              "and stdlib-llama's held-out perplexity through the recurrent graphs", ("torch", "tvm")),
    Benchmark("shift", "shift", "shift-linear on tvm-llvm: a 4096x4096 layer as packed 5-bit power-of-two weights vs FP32 dense, "
              "batch-1 GEMV and 128-token prefill, and the model file size; --accuracy: digits ViT / MiniLM; --convnets: "
              "zoo conv nets (ShiftConv) file size and cosine", ("tvm",)),
    Benchmark("shift-integer", "shift_integer", "shifts on integer activations (ShiftMatMulInteger) vs the int8 VNNI / AVX2 "
              "kernels, float shifts and FP32 on a 4096x4096 layer (GEMV, 128-row prefill); --vit: digits ViT ivit vs "
              "ivit-shift, top-1 and tvm-llvm latency", ("torch", "tvm")),
    Benchmark("hedgehog-quality", "hedgehog_quality", "linear attention with calibrated Hedgehog maps vs elu+1: digits-ViT top-1, "
              "MiniLM embedding cosine, per-block attention-output cosine", ("torch",)),
    Benchmark("binary-attention", "binary_attention", "binary-code attention (shiftadd): digits-ViT top-1 and per-block "
              "cosine at nbits 16/32 (MaskedAddMatMul vs the float form), one layer's latency vs softmax "
              "at 197 and 1K tokens on ORT and tvm-llvm", ("torch",)),
    Benchmark("linear-attention-quality", "linear_attention_quality", "linear-, sigmoid- and softplus-attention without "
              "training: digits-ViT top-1, MiniLM embedding cosine, per-block attention-output cosine", ("torch",)),
    Benchmark("finetune", "finetune", "graphopt.finetune gains side by side with FP32 and post-training: relufy on "
              "stdlib-llama (perplexity), digits ViT and MiniLM rewrites (top-1, embedding cosine)", ("torch",)),
    Benchmark("to-torch", "to_torch", "graphopt.to_torch on the ONNX node conformance cases and the zoo (cosine, "
              "bit-exact on ivit)", ("torch",)),
    Benchmark("train-mode", "train_mode", "a hand-written fine-tuning loop on to_torch(train=True): digits-ViT ivit "
              "distilled from FP32, top-1 before/after", ("torch",)),
    Benchmark("scaling", "scaling", "time vs graph size, per phase and for the CLI (log-log slope)"),
    Benchmark("fuzz-differential", "fuzz_differential", "every pass on generated graphs: declines or keeps the outputs"),
    Benchmark("fuzz-loader", "fuzz_loader", "mutated models through inspect and compile: exit-code histogram", ("torch",)),
)}

DEFAULT = ("overhead", "minilm-canonical", "ivit", "tvm", "sparsity")  # the README's tables


def missing_extras(benchmark: Benchmark) -> dict[str, list[str]]:
    """The extras ``benchmark`` needs whose modules are not installed: extra -> missing modules."""
    missing = {extra: [m for m in EXTRAS[extra] if importlib.util.find_spec(m) is None] for extra in benchmark.needs}
    return {extra: modules for extra, modules in missing.items() if modules}
