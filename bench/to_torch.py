"""``graphopt.to_torch`` measured: the ONNX node cases and the zoo, run as FX modules.

    python -m bench.to_torch conformance [--filter RE] [--json PATH]
    python -m bench.to_torch zoo [--only NAME ...] [--json PATH]

``conformance``: every ONNX backend node case whose ops all have a torch converter, run through
``to_torch`` against the case's expected outputs and tolerances; status pass / fail / error /
refused (an UnsupportedError: an element type or attribute combination graphopt.fx names).
``zoo``: each zoo model after ``canonicalize`` (and ``ivit`` for transformers), the FX module
against ONNX Runtime (optimizations off) on seeded inputs: cosine, max abs, bit-exact (``ivit``:
on every integer tensor the graph computes, each made a graph output).
"""

from __future__ import annotations

import argparse
import collections
import json
import warnings

import numpy as np


def _array(value, *, widen_bfloat16: bool = False) -> np.ndarray:
    """A case's input or output as numpy; outputs compared as float32 where bfloat16 (the
    comparison helper cannot read ml_dtypes), inputs kept as they are."""
    import onnx  # noqa: PLC0415
    from onnx import numpy_helper  # noqa: PLC0415

    array = numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else np.asarray(value)
    return array.astype(np.float32) if widen_bfloat16 and array.dtype.name == "bfloat16" else array


def _numpy(tensor) -> np.ndarray:
    import torch  # noqa: PLC0415

    return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).detach().numpy()


def run_conformance_case(case) -> dict:
    import torch  # noqa: PLC0415

    from graphopt import conformance  # noqa: PLC0415
    from graphopt.errors import UnsupportedError  # noqa: PLC0415
    from graphopt.fx import to_torch  # noqa: PLC0415

    names = conformance._input_names(case)
    try:
        module = to_torch(case.model)
        for inputs, outputs in case.data_sets:
            with torch.no_grad():
                got = module(**{module.input_names[n]: _array(v) for n, v in zip(names, inputs)})
            problem = conformance._close([_array(o, widen_bfloat16=True) for o in outputs], [_numpy(g) for g in got][:len(outputs)],
                                         case.rtol, case.atol)
            if problem:
                return {"name": case.name, "status": "fail", "detail": problem}
    except UnsupportedError as e:
        return {"name": case.name, "status": "refused", "detail": str(e)}
    except Exception as e:  # noqa: BLE001 - a converter bug: reported per case, not fatal
        return {"name": case.name, "status": "error", "detail": f"{type(e).__name__}: {e}"[:300]}
    return {"name": case.name, "status": "pass", "detail": ""}


def conformance(pattern: str | None = None) -> list[dict]:
    """One row per node case whose ops all have converters (single-graph cases, no functions)."""
    from graphopt import conformance as cases  # noqa: PLC0415
    from graphopt.fx import converters  # noqa: PLC0415

    table = converters.converter_table()
    rows = []
    for case in cases._cases(pattern):
        ops = {(n.domain, n.op_type) for n in case.model.graph.node}
        if not ops or case.model.functions or any(op not in table and op[1] != "Constant" for op in ops):
            continue
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            rows.append(run_conformance_case(case))
    return rows


def _compare(expected: list[np.ndarray], got) -> dict:
    cosine, max_abs, exact, integer_exact = 1.0, 0.0, True, True
    for e, g in zip(expected, got):
        g = _numpy(g)
        equal = bool(e.dtype == g.dtype and np.array_equal(e, g))
        exact &= equal
        integer_exact &= equal or e.dtype.kind not in "iu"
        e64, g64 = e.astype(np.float64).ravel(), g.astype(np.float64).ravel()
        if e64.size:
            max_abs = max(max_abs, float(np.abs(e64 - g64).max()))
            norm = float(np.linalg.norm(e64) * np.linalg.norm(g64))
            cosine = min(cosine, float(e64 @ g64) / norm if norm else 1.0)
    return {"cosine": cosine, "max_abs": max_abs, "exact": exact, "integer_exact": integer_exact}


def carried_exact(expected, got) -> bool:
    """Train mode's outputs ``got`` equal eval mode's ``expected`` bit for bit: float outputs in
    their own dtype, integer ones as the float64 carriers train mode returns (the same integers)."""
    for e, g in zip(expected, got, strict=True):
        e, g = _numpy(e), _numpy(g)
        if e.dtype.kind in "iu":
            if g.dtype != np.float64 or not np.array_equal(e.astype(np.float64), g):
                return False
        elif e.dtype != g.dtype or not np.array_equal(e, g):
            return False
    return True


def expose_integer_tensors(model) -> int:
    """Make every quantized tensor a node computes (int8/uint8/int16/int32) a graph output too, so
    an integer graph is compared tensor by tensor, not only at its outputs; returns how many."""
    import onnx_ir as ir  # noqa: PLC0415

    quantized = {ir.DataType.INT8, ir.DataType.UINT8, ir.DataType.INT16, ir.DataType.INT32}
    exposed = 0
    for node in list(model.graph):
        for value in node.outputs:
            if value.dtype in quantized and not value.is_graph_output():
                model.graph.outputs.append(value)
                exposed += 1
    return exposed


def zoo_row(entry, proto, stage: str) -> dict:
    import torch  # noqa: PLC0415

    import graphopt  # noqa: PLC0415
    from graphopt import testing  # noqa: PLC0415
    from graphopt.pipeline import run_pipeline  # noqa: PLC0415

    row = {"name": entry.name, "stage": stage}
    try:
        model = graphopt.load(proto)
        run_pipeline(model, stage, samples=[entry.example_inputs(seed=s) for s in range(2)])
        row["integer_tensors"] = expose_integer_tensors(model) if stage == "ivit" else 0
        feeds = entry.example_inputs(seed=5)
        expected = testing.run_ort(model, feeds)
        with torch.no_grad():
            got = graphopt.to_torch(model)(**feeds)
            row |= _compare(expected, got)
            if stage == "ivit":  # train mode computes eval mode's forward (graphopt.fx.train)
                row["train_exact"] = carried_exact(got, graphopt.to_torch(model, train=True)(**feeds))
    except Exception as e:  # noqa: BLE001 - one row per failure, the table goes on
        row["error"] = f"{type(e).__name__}: {e}"[:300]
    return row


def zoo(names: list[str] | None = None) -> list[dict]:
    from graphopt.models import zoo as models  # noqa: PLC0415

    rows = []
    for name in names or models.names():
        entry = models.get(name)
        try:
            proto = entry.build()
        except models.ExportUnsupported as e:
            rows.append({"name": name, "stage": "build", "error": str(e)[:200]})
            continue
        for stage in ("canonicalize", "ivit") if entry.transformer else ("canonicalize",):
            rows.append(zoo_row(entry, proto, stage))
            print(json.dumps(rows[-1]), flush=True)
    return rows


def _zoo_status(row: dict) -> str:
    if row["stage"] == "build":
        return "exporter limit"
    return "error" if "error" in row else "bit-exact" if row["exact"] else "close" if row["cosine"] >= 0.99999 else "far"


def main(argv: list[str] | None = None) -> int:
    import torch  # noqa: PLC0415

    torch.set_num_threads(1)
    parser = argparse.ArgumentParser(prog="python -m bench.to_torch", description=__doc__.splitlines()[0])
    parser.add_argument("suite", choices=["conformance", "zoo"])
    parser.add_argument("--filter", help="conformance: case-name regex")
    parser.add_argument("--only", nargs="*", help="zoo: entry names")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)
    rows = conformance(args.filter) if args.suite == "conformance" else zoo(args.only)
    for row in rows:
        if row.get("status", "pass") not in ("pass", "refused") or "error" in row:
            print(json.dumps(row))
    statuses = collections.Counter(r["status"] if "status" in r else _zoo_status(r) for r in rows)
    print(dict(statuses))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
