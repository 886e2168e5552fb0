"""MiniLM canonicalization across exporters: what got rewritten and how far outputs moved.

    python -m bench.minilm_canonical [--sentences 16]

For each export of all-MiniLM-L6-v2 (dynamo opset 18; legacy opsets 14 and 17; eager and sdpa
attention) runs `graphopt.compile(..., passes="canonicalize")` on real tokenized sentences and
prints canonical op counts, cosine / max abs error of the last hidden state, and pipeline time.
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import graphopt  # noqa: E402
from graphopt.models import minilm  # noqa: E402

VARIANTS = [(e, o, a) for e, o in (("dynamo", 18), ("legacy", 14), ("legacy", 17)) for a in ("eager", "sdpa")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=16)
    args = parser.parse_args()
    batch = minilm.tokenize(minilm.sentences()[: args.sentences], seq_len=128)
    samples = [{k: v[i : i + 1] for k, v in batch.items()} for i in range(args.sentences)]
    rows = []
    print(f"{'variant':<18} {'Gelu':>4} {'LayerNorm':>9} {'attention':>9} {'cosine':>10} {'max abs':>9} {'pipeline s':>10}")
    for exporter, opset, attn in VARIANTS:
        proto = minilm.build(exporter=exporter, opset=opset, attn_implementation=attn)
        result = graphopt.compile(proto, passes="canonicalize", calib=samples, validate=True)
        ops = result.report.ops_after
        attention = sum(c for op, c in ops.items() if op.endswith("DotProductAttention"))
        acc = result.report.accuracy["last_hidden_state"]
        row = {
            "variant": f"{exporter}{opset}-{attn}", "gelu": ops.get("Gelu", 0), "layer_norm": ops.get("LayerNormalization", 0),
            "attention": attention, "cosine": acc["cosine"], "max_abs": acc["max_abs"], "pipeline_s": result.report.seconds["rewrite"],
        }
        rows.append(row)
        print(f"{row['variant']:<18} {row['gelu']:>4} {row['layer_norm']:>9} {row['attention']:>9} {row['cosine']:>10.7f} {row['max_abs']:>9.2e} {row['pipeline_s']:>10.2f}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
