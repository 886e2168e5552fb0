"""Node-count scaling: time vs nodes through load, checks, each pass and save, and the real CLI.

    python -m bench.scaling                       # chains of 1k/5k/20k/100k Relu + a ~100k-node BERT stack
    python -m bench.scaling --sizes 1000,5000 --bert-nodes 5000,20000 --no-cli

Two graph shapes: a straight chain of N unnamed ``Relu`` nodes (the shape that exposed per-edge
``list.index`` and rules x nodes matching), and a real-shaped graph: tiny BERT layers
(``graphopt.models.synthetic_bert``, hidden 8, legacy-exporter spelling with Shape/Gather/Concat
chains, erf GELU and decomposed LayerNorm) stacked until the graph has about N nodes, so every
pass of ``canonicalize`` finds work. Per size: ``load`` (parse, proto checks, deserialize),
``check`` (structure + onnx.checker without weights), each pass, ``save``, their sum, and the
wall time of ``graphopt compile --passes canonicalize --no-validate --bench-runs 0`` in a fresh
process (which adds ~1.5 s of start-up). The slope is a least-squares fit of log(time) on
log(nodes): 1 is linear.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time

import onnx
import onnx.helper as oh

NODES_PER_BERT_LAYER = 78  # synthetic_bert at the tiny config below, per encoder layer
_BERT_FIXED_NODES = 19  # embeddings and mask


def build_chain(nodes: int, path: str) -> str:
    """``nodes`` unnamed Relu nodes in a line: v0 -> v1 -> ... -> v{nodes}."""
    float_ = onnx.TensorProto.FLOAT
    graph = oh.make_graph(
        [oh.make_node("Relu", [f"v{i}"], [f"v{i + 1}"]) for i in range(nodes)],
        "chain",
        [oh.make_tensor_value_info("v0", float_, [1, 8])],
        [oh.make_tensor_value_info(f"v{nodes}", float_, [1, 8])],
    )
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]), path)
    return path


def build_bert_stack(nodes: int, path: str) -> str:
    """Tiny BERT layers (hidden 8) stacked to about ``nodes`` nodes."""
    from graphopt.models import synthetic_bert  # noqa: PLC0415

    layers = max(1, round((nodes - _BERT_FIXED_NODES) / NODES_PER_BERT_LAYER))
    synthetic_bert.build(layers=layers, hidden=8, heads=2, intermediate=16, vocab=50, seq_len=4, path=path,
                         external_data=False)
    return path


def node_count(path: str) -> int:
    return len(onnx.load(path, load_external_data=False).graph.node)


def measure_api(path: str, passes: str) -> dict[str, float]:
    """Seconds per phase through the Python API pieces the CLI runs."""
    import onnx_ir.passes.common as common_passes  # noqa: PLC0415

    from graphopt import capture, ops, pipeline, storage, validity  # noqa: PLC0415

    times: dict[str, float] = {}
    start = time.perf_counter()
    model = capture.load_path(path)
    loaded = time.perf_counter() - start
    start = time.perf_counter()
    validity.check_model(model)  # load_path ran it once: time it again on its own
    times["check"] = time.perf_counter() - start
    times["load"] = max(loaded - times["check"], 0.0)
    work = model.clone()
    start = time.perf_counter()
    records = pipeline.run_pipeline(work, passes)
    times["passes"] = time.perf_counter() - start
    seen: dict[str, int] = {}
    for record in records:
        seen[record.name] = seen.get(record.name, 0) + 1
        name = record.name if seen[record.name] == 1 else f"{record.name}#{seen[record.name]}"
        times[f"pass:{name}"] = record.seconds
    start = time.perf_counter()
    ops.attach_functions(work)
    common_passes.NameFixPass()(work)
    with tempfile.TemporaryDirectory(prefix="graphopt-scaling-") as folder:
        storage.save_model(work, os.path.join(folder, "model.onnx"))
    times["save"] = time.perf_counter() - start
    times["total"] = times["load"] + times["check"] + times["passes"] + times["save"]
    return times


def measure_cli(path: str, passes: str, timeout: float) -> float:
    with tempfile.TemporaryDirectory(prefix="graphopt-scaling-cli-") as folder:
        start = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "graphopt", "compile", path, "-o", os.path.join(folder, "out"), "--passes", passes,
             "--no-validate", "--bench-runs", "0", "--quiet"],
            capture_output=True, text=True, timeout=timeout,
        )
        seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"graphopt compile {path} exited {result.returncode}: {result.stderr.strip()[-500:]}")
    return seconds


def slope(points: list[tuple[int, float]]) -> float:
    """Least-squares slope of log(seconds) on log(nodes)."""
    points = [(n, t) for n, t in points if n > 0 and t > 0]
    if len(points) < 2:
        return float("nan")
    xs = [math.log(n) for n, _ in points]
    ys = [math.log(t) for _, t in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else float("nan")


def run(kind: str, sizes: list[int], passes: str, cli: bool, timeout: float, folder: str) -> list[dict]:
    rows = []
    for size in sizes:
        path = os.path.join(folder, f"{kind}-{size}.onnx")
        (build_chain if kind == "chain" else build_bert_stack)(size, path)
        row = {"graph": kind, "nodes": node_count(path), **measure_api(path, passes)}
        row["cli"] = measure_cli(path, passes, timeout) if cli else float("nan")
        rows.append(row)
        print(_format_row(row), flush=True)
    return rows


_COLUMNS = ("load", "check", "passes", "save", "total", "cli")


def _format_row(row: dict) -> str:
    cells = " | ".join(f"{row[c]:.2f}" if not math.isnan(row[c]) else "-" for c in _COLUMNS)
    return f"| {row['graph']} | {row['nodes']:,} | {cells} |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,5000,20000,100000", help="Relu-chain lengths (nodes)")
    parser.add_argument("--bert-nodes", default="100000",
                        help="approximate node counts of the stacked-BERT graph (comma-separated; '' for none)")
    parser.add_argument("--passes", default="canonicalize")
    parser.add_argument("--no-cli", action="store_true", help="skip the `graphopt compile` subprocess timing")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per CLI run")
    parser.add_argument("--passes-detail", action="store_true", help="also print seconds per pass")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    bert = [int(s) for s in args.bert_nodes.split(",") if s.strip()]
    print(f"pipeline: {args.passes}; seconds per phase (API pieces) and `graphopt compile` wall time (cli)")
    print("| graph | nodes | " + " | ".join(_COLUMNS) + " |")
    print("|---|---:|" + "---:|" * len(_COLUMNS))
    rows = []
    with tempfile.TemporaryDirectory(prefix="graphopt-scaling-") as folder:
        if sizes:
            rows += run("chain", sizes, args.passes, not args.no_cli, args.timeout, folder)
        if bert:
            rows += run("bert", bert, args.passes, not args.no_cli, args.timeout, folder)
    print()
    for kind in ("chain", "bert"):
        mine = [r for r in rows if r["graph"] == kind]
        if len(mine) < 2:
            continue
        fits = {c: slope([(r["nodes"], r[c]) for r in mine]) for c in ("total", "passes", "load", "cli")}
        print(f"{kind}: log-log slope of time vs nodes: " + ", ".join(f"{c} {v:.2f}" for c, v in fits.items() if not math.isnan(v)))
    if len({r["graph"] for r in rows}) == 2:
        both = [(r["nodes"], r["total"]) for r in rows]
        print(f"all graphs together: total slope {slope(both):.2f}")
    if args.passes_detail:
        for row in rows:
            detail = ", ".join(f"{k[5:]} {v:.2f}" for k, v in row.items() if k.startswith("pass:"))
            print(f"{row['graph']} {row['nodes']:,}: {detail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
