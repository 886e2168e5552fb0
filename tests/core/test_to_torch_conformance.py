"""The ONNX backend node cases through ``graphopt.to_torch``: every case whose ops all have a torch
converter passes with the case's own tolerances, except KNOWN (each with its reason; two of the
bfloat16 rounding cases pass or fail with torch's thread count). Cases a
converter refuses by name (UnsupportedError: float8/int4/uint16-64 element types, training-mode
Dropout, blocked quantization, Resize antialias, ...) are counted, not failed.

Measured (``python -m bench.to_torch conformance``, onnx 1.23.2): 962 pass, 8 fail (KNOWN), 254 refused.
"""

from __future__ import annotations

import pytest

from bench import to_torch as measure

pytestmark = pytest.mark.slow

_BF16 = "bfloat16: torch computes in bfloat16 where the reference rounds once from float32 (1 bf16 ulp, 3.9e-3)"
KNOWN = {
    **dict.fromkeys([f"test_attention_{n}_bf16_expanded" for n in (
        "4d_causal", "4d_padded_kv", "4d_causal_padded_kv", "4d_attn_mask_causal", "3d_causal")], _BF16),
    "test_celu_bfloat16_expanded": _BF16,
    "test_castlike_FLOAT_to_BFLOAT16": "torch rounds float32 -> bfloat16 to nearest even; the case expects another rounding (1 ulp)",
    "test_attention_4d_causal_fp16_expanded": "float16: 2 of 192 elements 1 ulp (4.9e-4) apart",
    "test_resize_downsample_scales_linear_align_corners": "the case divides by the unfloored in·scale - 1 (1.4); "
                                                          "ONNX Runtime fails it identically (output length - 1)",
    "test_resize_downsample_scales_cubic_align_corners": "as the linear case: ONNX Runtime fails it identically",
}


def test_every_supported_node_case_passes_but_the_known_ones():
    rows = measure.conformance()
    failing = {row["name"]: row["detail"] for row in rows if row["status"] in ("fail", "error")}
    assert set(failing) <= set(KNOWN), {name: failing[name] for name in set(failing) - set(KNOWN)}
    assert sum(row["status"] == "pass" for row in rows) >= 970 - len(KNOWN)
