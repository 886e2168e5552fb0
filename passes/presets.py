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
