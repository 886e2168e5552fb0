"""Tool overhead: load + pipeline + save of a BERT-large-sized graph with random weights.

    python -m bench.overhead                          # 24 layers, hidden 1024 (~335M params)
    python -m bench.overhead --pipeline cleanup,opset-upgrade --keep

The model (``graphopt.models.synthetic_bert``, legacy-exporter spelling, weights as external
data) is built once into ``$GRAPHOPT_CACHE`` (default ``~/.cache/graphopt/bench``). A fresh
Python process then runs ``capture.load`` -> ``run_pipeline`` -> ``storage.save_model`` into a
temporary folder, so its peak RSS is the tool's work and nothing else. Reported: wall time per
phase, peak RSS (kernel high-water mark ``VmHWM``, which counts mmapped weight pages, plus the
peak of anonymous memory sampled every 10 ms), the ratio of peak RSS to the model's bytes
(``.onnx`` + ``.data`` on disk), each pass's rewrite counts, and PASS/FAIL against the targets
(load + pipeline + save under 20 s; peak RSS under 2.5x the model's bytes). Interpreter start-up
and imports are measured and printed but not counted in the time target.

The last line of stdout is one JSON object with every number (for CI and scripts).
Exit code: 0 when both targets are met, 1 when one is missed, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

TIME_TARGET_S = 20.0
MEMORY_TARGET_RATIO = 2.5
_SAMPLE_S = 0.01
_MODULE = __spec__.name  # "bench.overhead" in a checkout, "graphopt.bench.overhead" installed


# -- the measured process -------------------------------------------------------------------


def _proc_status() -> dict[str, int]:
    """Memory lines of /proc/self/status, in bytes (Linux)."""
    values = {}
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                values[key] = int(rest.split()[0]) * 1024
    return values


class _Sampler:
    """Samples anonymous and file-backed RSS every 10 ms; the kernel only keeps VmHWM."""

    def __init__(self) -> None:
        self.peak_anon = 0
        self.peak_file = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(_SAMPLE_S)

    def sample(self) -> None:
        status = _proc_status()
        self.peak_anon = max(self.peak_anon, status.get("RssAnon", 0))
        self.peak_file = max(self.peak_file, status.get("RssFile", 0))

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def measure(model_path: str, pipeline: str, out_dir: str) -> dict:
    """Run load -> pipeline -> save in this process and return timings and memory.

    Meant to run in a fresh interpreter (see ``run_child``): peak RSS is per process.
    """
    import resource  # noqa: PLC0415

    started = time.perf_counter()
    with _Sampler() as sampler:
        import onnx_ir.passes.common as common_passes  # noqa: PLC0415

        from graphopt import capture, ops, pipeline as pipeline_mod, storage  # noqa: PLC0415

        pipeline_mod.parse_pipeline(pipeline).expand()  # a usage error before any work
        after_import = _proc_status()
        t0, c0 = time.perf_counter(), time.process_time()
        model = capture.load(model_path)
        t1, c1 = time.perf_counter(), time.process_time()
        records = pipeline_mod.run_pipeline(model, pipeline)
        # What graphopt.compile does before saving: graphopt ops get their ONNX function bodies.
        ops.attach_functions(model)
        common_passes.NameFixPass()(model)
        t2, c2 = time.perf_counter(), time.process_time()
        written = storage.save_model(model, os.path.join(out_dir, os.path.basename(model_path)))
        t3, c3 = time.perf_counter(), time.process_time()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    status = _proc_status()
    return {
        "import_s": t0 - started,
        "load_s": t1 - t0,
        "pipeline_s": t2 - t1,
        "save_s": t3 - t2,
        "total_s": t3 - t0,
        # CPU seconds (all threads): less sensitive than wall time to other load on the machine
        "load_cpu_s": c1 - c0,
        "pipeline_cpu_s": c2 - c1,
        "save_cpu_s": c3 - c2,
        "total_cpu_s": c3 - c0,
        "peak_rss_bytes": status["VmHWM"],
        "ru_maxrss_bytes": usage.ru_maxrss * 1024,
        "peak_anon_bytes": sampler.peak_anon,
        "peak_file_bytes": sampler.peak_file,
        "rss_after_import_bytes": after_import["VmRSS"],
        "passes": [
            {
                "name": r.name,
                "seconds": round(r.seconds, 3),
                "modified": r.modified,
                "rewrites": r.rewrites,
                "notes": r.notes,
                "nodes_before": r.nodes_before,
                "nodes_after": r.nodes_after,
            }
            for r in records
        ],
        "written": written,
        "written_bytes": sum(os.path.getsize(p) for p in written),
    }


def _child_main(spec: str) -> int:
    args = json.loads(spec)
    result = measure(args["model"], args["pipeline"], args["out"])
    print(json.dumps(result))
    return 0


# -- the driver -------------------------------------------------------------------------------


def _builder_digest() -> str:
    from graphopt.models import synthetic_bert  # noqa: PLC0415

    source = Path(synthetic_bert.__file__).read_bytes()
    return hashlib.sha256(source).hexdigest()[:10]


def cache_dir() -> Path:
    return Path(os.environ.get("GRAPHOPT_CACHE") or Path.home() / ".cache" / "graphopt" / "bench")


def cached_model(config: dict, *, rebuild: bool = False, log=print) -> Path:
    """The model for ``config``, built on first use (keyed by the config and the builder's source)."""
    from graphopt.models import synthetic_bert  # noqa: PLC0415

    stem = "bert-" + "-".join(f"{k}{v}" for k, v in sorted(config.items()))
    key = f"{stem}-{_builder_digest()}"
    path = cache_dir() / key / "model.onnx"
    complete = path.exists() and (not config.get("external_data", True) or Path(str(path) + ".data").exists())
    if rebuild or not complete:
        for stale in cache_dir().glob(f"{stem}-*"):  # same config, older builder: 1.3 GB each
            if stale.name != key and stale.name[len(stem) + 1:].isalnum():
                shutil.rmtree(stale, ignore_errors=True)
        log(f"building {path} ...")
        start = time.perf_counter()
        synthetic_bert.build(**config, path=path)
        log(f"built in {time.perf_counter() - start:.1f} s")
    return path


def model_bytes(path: Path) -> int:
    data = Path(str(path) + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def parameter_count(path: Path) -> int:
    import onnx  # noqa: PLC0415

    proto = onnx.load(str(path), load_external_data=False)
    total = 0
    for tensor in proto.graph.initializer:
        if tensor.data_type == onnx.TensorProto.FLOAT:
            count = 1
            for d in tensor.dims:
                count *= d
            total += count
    return total


def run_child(model: Path, pipeline: str, out_dir: str) -> dict:
    """Measure in a fresh interpreter; return its result dict (raises with its stderr on failure)."""
    spec = json.dumps({"model": str(model), "pipeline": pipeline, "out": out_dir})
    env = dict(os.environ)
    if not _MODULE.startswith("graphopt."):  # a checkout's bench/: its folder must be importable from out_dir
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parent.parent), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", _MODULE, "--child", spec],  # this module, as imported: bench.overhead or graphopt.bench.overhead
        # Not the model's folder: external data must be found wherever the tool runs from.
        cwd=out_dir,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"the measured process failed (exit {proc.returncode}):\n{proc.stderr.strip()}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _mb(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def report(result: dict) -> str:
    lines = [
        f"model       {result['model']}",
        f"parameters  {result['parameters']:,}   model bytes {_mb(result['model_bytes'])}",
        f"pipeline    {result['pipeline']}",
        "",
        f"{'phase':<10} {'seconds':>8} {'cpu s':>8}",
        f"{'(imports)':<10} {result['import_s']:>8.2f}",
        f"{'load':<10} {result['load_s']:>8.2f} {result['load_cpu_s']:>8.2f}",
        f"{'pipeline':<10} {result['pipeline_s']:>8.2f} {result['pipeline_cpu_s']:>8.2f}",
        f"{'save':<10} {result['save_s']:>8.2f} {result['save_cpu_s']:>8.2f}",
        f"{'total':<10} {result['total_s']:>8.2f} {result['total_cpu_s']:>8.2f}   "
        f"target < {TIME_TARGET_S:g} s (wall): {result['time_verdict']}",
        "",
        f"{'pass':<16} {'seconds':>8} {'nodes':>13}  rewrites / notes",
    ]
    for p in result["passes"]:
        nodes = f"{p['nodes_before']}->{p['nodes_after']}"
        detail = ", ".join(f"{k}={v}" for k, v in p["rewrites"].items()) or "-"
        if p["notes"]:
            detail += "; " + "; ".join(p["notes"])
        lines.append(f"{p['name']:<16} {p['seconds']:>8.2f} {nodes:>13}  {detail}")
    lines += [
        "",
        f"peak RSS    {_mb(result['peak_rss_bytes'])} (VmHWM) = {result['rss_ratio']:.2f}x model bytes, "
        f"target < {MEMORY_TARGET_RATIO:g}x: {result['memory_verdict']}",
        f"            anonymous peak {_mb(result['peak_anon_bytes'])}, file-backed peak {_mb(result['peak_file_bytes'])}, "
        f"after imports {_mb(result['rss_after_import_bytes'])} "
        f"(peak above that: {result['rss_above_imports_ratio']:.2f}x model bytes)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.overhead",
        description="Measure graphopt's own cost: load + pipeline + save of a BERT-large-sized random-weight graph "
        f"(targets: under {TIME_TARGET_S:g} s and peak RSS under {MEMORY_TARGET_RATIO:g}x the model's bytes).",
    )
    parser.add_argument("--layers", type=int, default=24, help="encoder layers (default 24)")
    parser.add_argument("--hidden", type=int, default=1024, help="hidden size (default 1024)")
    parser.add_argument("--heads", type=int, default=16, help="attention heads (default 16)")
    parser.add_argument("--intermediate", type=int, default=None, help="FFN size (default 4 x hidden)")
    parser.add_argument("--vocab", type=int, default=30522, help="vocabulary size (default 30522)")
    parser.add_argument("--seq-len", type=int, default=128, help="sequence length of the static inputs (default 128)")
    parser.add_argument("--opset", type=int, default=14, help="opset the model is built with (default 14)")
    parser.add_argument(
        "--inline-weights",
        action="store_true",
        help="build the input as one self-contained .onnx (weights inside the protobuf, as the legacy exporter "
        "saves models under 2 GB) instead of .onnx + .data",
    )
    parser.add_argument("--pipeline", default="canonicalize", help="pipeline string (default canonicalize)")
    parser.add_argument("--keep", action="store_true", help="keep the rewritten model and print where it is")
    parser.add_argument("--out", default=None, help="folder for the rewritten model (implies --keep)")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the cached input model")
    parser.add_argument("--json", dest="json_path", default=None, help="also write the JSON result to this file")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        return _child_main(args.child)

    from graphopt import pipeline as pipeline_mod  # noqa: PLC0415
    from graphopt.errors import UsageError  # noqa: PLC0415

    try:
        pipeline_mod.parse_pipeline(args.pipeline).expand()
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    config = {
        "layers": args.layers,
        "hidden": args.hidden,
        "heads": args.heads,
        "intermediate": args.intermediate or 4 * args.hidden,
        "vocab": args.vocab,
        "seq_len": args.seq_len,
        "opset": args.opset,
    }
    if args.inline_weights:
        config["external_data"] = False
    model = cached_model(config, rebuild=args.rebuild, log=lambda m: print(m, file=sys.stderr))
    keep = args.keep or args.out is not None
    if args.out is not None:
        os.makedirs(args.out, exist_ok=True)
        out_dir = os.path.abspath(args.out)
    else:
        out_dir = tempfile.mkdtemp(prefix="graphopt-overhead-")
    try:
        measured = run_child(model, args.pipeline, out_dir)
    finally:
        if not keep:
            shutil.rmtree(out_dir, ignore_errors=True)
    size = model_bytes(model)
    result = {
        "model": str(model),
        "config": config,
        "pipeline": args.pipeline,
        "parameters": parameter_count(model),
        "model_bytes": size,
        **measured,
    }
    result["rss_ratio"] = result["peak_rss_bytes"] / size
    # What the tool adds on top of the interpreter and its libraries (meaningful for small models).
    result["rss_above_imports_ratio"] = (result["peak_rss_bytes"] - result["rss_after_import_bytes"]) / size
    result["time_target_s"] = TIME_TARGET_S
    result["memory_target_ratio"] = MEMORY_TARGET_RATIO
    result["time_verdict"] = "PASS" if result["total_s"] < TIME_TARGET_S else "FAIL"
    result["memory_verdict"] = "PASS" if result["rss_ratio"] < MEMORY_TARGET_RATIO else "FAIL"
    result["verdict"] = "PASS" if result["time_verdict"] == result["memory_verdict"] == "PASS" else "FAIL"
    if keep:
        result["out_dir"] = out_dir
    else:
        result.pop("written", None)
    print(report(result))
    if keep:
        print(f"\nrewritten model kept in {out_dir}")
    print(json.dumps(result, sort_keys=True))
    if args.json_path:
        with open(args.json_path, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2, sort_keys=True)
    return 0 if result["verdict"] == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
