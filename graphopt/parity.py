"""Backend parity: each compiled target's outputs vs ONNX Runtime on the rewritten model (an
integer graph must match bit for bit), vs the original, and the targets vs each other."""

from __future__ import annotations

import numpy as np

from graphopt.errors import UnsupportedError
from graphopt.metrics import Tolerances, apply_mask, compare_outputs
from graphopt.report import Report

__all__ = ["pairwise_parity", "target_parity"]


def target_parity(artifact, samples, reference, rewritten, tolerances: Tolerances, report: Report,
                  mask: str | None = None) -> tuple[dict, list | None]:
    """``artifact``'s outputs on ``samples`` vs the original model and vs ONNX Runtime running the
    rewritten model (an integer graph must match the latter bit for bit, padding included), and the
    outputs themselves (None when the target cannot run here, e.g. a GPU target on a machine without
    one: noted, not failed). Against the original, positions the ``mask`` input marks as padding are
    left out, as in the accuracy check."""
    try:
        outputs = [artifact.run(s) for s in samples]
    except UnsupportedError as e:
        return {"ran": False, "note": str(e)}, None
    onnx_outputs = rewritten[: len(samples)]
    vs_onnx = compare_outputs(onnx_outputs, outputs)
    bit_exact = all(np.array_equal(o[k], a[k]) for o, a in zip(onnx_outputs, outputs) for k in o)
    for name, m in vs_onnx.items():
        report.violations.extend(f"{artifact.target} vs onnx: {v}" for v in tolerances.violations(name, m))
    return {
        "ran": True,
        "samples": len(samples),
        "bit_exact_vs_onnx": bit_exact,
        "vs_onnx": {k: v.as_dict() for k, v in vs_onnx.items()},
        "vs_original": {k: v.as_dict() for k, v in compare_outputs(*_masked(reference[: len(samples)], outputs, samples, mask)).items()},
    }, outputs


def _masked(reference, outputs, samples, mask: str | None):
    if mask is None:
        return reference, outputs
    return apply_mask(reference, samples, mask), apply_mask(outputs, samples, mask)


def pairwise_parity(parity: dict, outputs: dict[str, list | None]) -> None:
    """Every two targets that ran, compared with each other: ``parity[a]["vs_targets"][b]`` holds
    whether they agree bit for bit and their largest absolute difference over all outputs."""
    ran = [target for target, got in outputs.items() if got is not None]
    for a in ran:
        parity[a]["vs_targets"] = {}
        for b in ran:
            if a == b:
                continue
            metrics = compare_outputs(outputs[b], outputs[a])
            parity[a]["vs_targets"][b] = {
                "bit_exact": all(np.array_equal(x[k], y[k]) for x, y in zip(outputs[a], outputs[b]) for k in x),
                "max_abs": max((m.max_abs for m in metrics.values()), default=0.0),
            }
