"""Per replaced attention block: how close its output stays to the softmax attention it replaced.

Every pass that replaces a softmax attention (``linear-attention``, ``sigmoid-attention``,
``softplus-attention``) stamps the node computing the block's output with ``SITE_KEY``: the name
the attention's output has in the model before the pass. Both models run on the same samples (ONNX
Runtime, optimizations off); each block's output is compared with the original's value of that
name: cosine (over all elements of all samples) and relative error ``|a - b| / |b|``. The error is
cumulative (each block sees every replacement upstream of it), as in ``graphopt.layer_error``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from graphopt.calibrate import Calibrator
from graphopt.metrics import cosine
from graphopt.ops.linear_attention import FEATURE_MAP_KEY, SITE_KEY
from graphopt.pipeline import PROVENANCE_PASS

__all__ = ["BlockFidelity", "attention_fidelity", "replaced_blocks"]


@dataclasses.dataclass(frozen=True)
class BlockFidelity:
    site: str  # the attention's output in the original model
    op_type: str  # what computes it now
    made_by: str  # the pass, as stamped
    feature_map: str | None
    cosine: float
    relative_error: float

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def replaced_blocks(model: ir.Model) -> list[ir.Node]:
    """The nodes (main graph) that compute a replaced attention's output, in graph order."""
    return [node for node in model.graph if SITE_KEY in node.metadata_props]


def attention_fidelity(original: ir.Model, rewritten: ir.Model, samples: Sequence[Mapping[str, np.ndarray]], *,
                       threads: int = 2) -> list[BlockFidelity]:
    nodes = [n for n in replaced_blocks(rewritten) if n.metadata_props[SITE_KEY]]
    if not nodes or not samples:
        return []
    reference = Calibrator(original, samples, threads=threads).capture(sorted({n.metadata_props[SITE_KEY] for n in nodes}))
    test = Calibrator(rewritten, samples, threads=threads).capture(sorted({n.outputs[0].name for n in nodes}))
    blocks = []
    for node in nodes:
        site = node.metadata_props[SITE_KEY]
        if site not in reference or node.outputs[0].name not in test:
            continue
        a = np.concatenate([np.asarray(x, np.float64).ravel() for x in test[node.outputs[0].name]])
        b = np.concatenate([np.asarray(x, np.float64).ravel() for x in reference[site]])
        relative = float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))
        blocks.append(BlockFidelity(site, node.op_type, node.metadata_props.get(PROVENANCE_PASS, ""),
                                    node.metadata_props.get(FEATURE_MAP_KEY), float(cosine(a, b)), relative))
    return blocks
