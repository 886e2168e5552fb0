"""Named pipelines (presets). Each is a registry entry that expands to a pipeline string.

Order matters in `canonicalize`: the opset upgrade comes first so the canonical ops exist; the
norms and GELU are fused before attention so attention's Q/K/V producers are already clean
(instance-norm first: InstanceNormalization becomes a LayerNormalization and a per-channel affine);
cleanup runs last to drop what the fusions left unused.
"""

from __future__ import annotations

from graphopt.registry import get_pass, register_preset

register_preset(
    "canonicalize",
    "cleanup,opset-upgrade,gelu,instance-norm,layer-norm,rms-norm,silu,attention,cleanup",
    "Turn exporter spellings of GELU, norms, SiLU and attention into one canonical node each.",
)

# I-ViT integer-only inference. No `attention` pass: its DotProductAttention would hide the
# Softmax and the two attention MatMuls that shiftmax and int8-linear rewrite. Settings measured on
# all-MiniLM-L6-v2 (sentence-embedding cosine vs FP32, 100 held-out sentences):
# - int8-linear smoothing=0.8 (SmoothQuant into the per-channel weight scales): the whole preset
#   goes from 0.978 to 0.992; without it the GELU outputs' outlier channels dominate.
# - ShiftGELU input int16 (like I-LayerNorm's): percentile-clipped int8 cut the few FFN activations
#   that make BERT's outlier residual channel (error 142 there); 0.992 -> 0.9935. n=8 keeps the
#   op's normalizer f = (2^31-1)/sum at ~13 bits with int16 scales (n=16 leaves 2-3 bits): 0.9947.
#   Per-element max (row_max=false), as measured for shiftgelu alone.
# LLaMA-style decoders (tiny-llama, logits cosine vs FP32 on 8 held-out prompts): rms-norm and silu
# canonicalize first; irmsnorm (IntLayerNorm without the mean), shiftsilu (ShiftGelu at slope 1) and
# imul (int16 x int16 products: SwiGLU's silu(gate)*up, RoPE's q*cos and rotate_half(q)*sin, whose
# cos/sin of the positions enter the region like a mask) make it integer-only. shiftmax(mask=true):
# -128 means a mask fill, probability 0 (the causal mask otherwise keeps ~uniform weight when the
# scores are small: 0.84); fit_n=true: n no larger than an int8 row can span, so small score scales
# keep the normalizer's bits (0.998 -> 0.99998 for the shiftmax islands alone). Whole preset: 0.9993.
# fold-static-values: with static input shapes (--input-shape, dynamo exports), shape arithmetic and a
# ViT's Resize of its position embedding become constants instead of float ops in the integer region.
# instance-norm: InstanceNormalization (Wav2Vec2's GroupNorm, groups = channels) as a last-axis
# LayerNormalization and a per-channel Mul/Add, which ilayernorm, imul and integer-chain make integer.
# float32-islands: on float16 models (ORT's float16 converter) the ops the islands replace compute in
# float32 between Casts (the islands' scales need float32); integer-chain lowers the float16 ops
# between them. Zoo bert-fp16 / vit-fp16: integer-only, cosine vs the fp16 original 0.9999996 / 0.99993
# (their float32 forms: 0.9999998 / 0.99993); a model without float16 is not touched.
# Pre-quantized inputs: drop-fake-quant removes a QDQ model's activation Quantize->Dequantize pairs
# (int8-linear quantizes with its own calibrated scales) before opset-upgrade, which would otherwise
# stop a QDQ model at opset 20 (ONNX Runtime's QDQ optimizer bug at >= 21, see opset_upgrade.py); weights stored as int8 (DequantizeLinear,
# Cast + Mul) are read by int8-linear as they are.
register_preset(
    "ivit",
    "cleanup,drop-fake-quant,opset-upgrade,fold-static-values(limit=1048576),cleanup,gelu,instance-norm,layer-norm,rms-norm,silu,float32-islands,int8-linear(smoothing=0.8),shiftmax(mask=true,fit_n=true),"
    "shiftgelu(row_max=false,n=8,input_bits=16),shiftsilu(row_max=false,n=8,input_bits=16),ilayernorm,irmsnorm,imul,"
    "integer-chain,cleanup",
    "I-ViT integer-only inference: int8 linear layers, Shiftmax, ShiftGELU/SiLU, I-LayerNorm/RMSNorm, integer products, chained.",
)

# Shift-add (issue 17): weights of every linear layer as packed signed powers of two
# (shift-linear's defaults: 5-bit DeepShift codes, per-channel float scale), then binary-code attention
# (binary-attention's defaults: 16-bit codes fitted on the calibration samples).
register_preset(
    "shiftadd",
    "canonicalize,shift-linear,binary-attention",
    "Shift-add: canonicalize, then MatMul/Gemm weights as packed signed powers of two (ShiftMatMul) and softmax "
    "attention as binary-code (masked-addition) attention with codes fitted on calibration data.",
)

# ivit with shifts (issue 17 item 5): shift-integer right after int8-linear turns each int8 weight matmul into
# ShiftMatMulInteger (integer ±2^e weights, the per-column fit folded into the island's scale and bias), so the
# passes after it calibrate on the shifted layers and integer-chain requantizes them: integer-only, exact.
register_preset(
    "ivit-shift",
    get_pass("ivit").pipeline.replace("int8-linear(smoothing=0.8),", "int8-linear(smoothing=0.8),shift-integer,", 1),
    "ivit with the int8 weight matmuls as integer shifts (ShiftMatMulInteger: ±(x << e), 5-bit packed weights).",
)
