"""Named pipelines (presets). Each is a registry entry that expands to a pipeline string.

Order matters in `canonicalize`: the opset upgrade comes first so the canonical ops exist; the
norms and GELU are fused before attention so attention's Q/K/V producers are already clean;
cleanup runs last to drop what the fusions left unused.
"""

from __future__ import annotations

from graphopt.registry import register_preset

register_preset(
    "canonicalize",
    "cleanup,opset-upgrade,gelu,layer-norm,rms-norm,silu,attention,cleanup",
    "Turn exporter spellings of GELU, norms, SiLU and attention into one canonical node each.",
)

# I-ViT integer-only inference. int8-linear smooths outlier channels into the weights (alpha 0.8:
# MiniLM int8-linear alone 0.997 vs 0.984 without; see passes/int8_linear.py). No `attention` pass: its DotProductAttention would hide the
# Softmax and the two attention MatMuls that shiftmax and int8-linear rewrite. ShiftGELU uses the
# settings measured on MiniLM (per-element max, n=16, percentile: cosine 0.9956 alone vs 0.9929
# with the paper's defaults; see passes/shiftgelu.py). integer-chain then joins the islands.
register_preset(
    "ivit",
    "cleanup,opset-upgrade,gelu,layer-norm,int8-linear(smoothing=0.8),shiftmax,"
    "shiftgelu(row_max=false,n=16,calibration=percentile),ilayernorm,integer-chain,cleanup",
    "I-ViT integer-only inference: int8 linear layers, Shiftmax, ShiftGELU, I-LayerNorm, chained.",
)
