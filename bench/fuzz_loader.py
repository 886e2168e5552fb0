"""Loader fuzzing: mutated model files through the real `graphopt inspect` and `graphopt compile`.

    python -m bench.fuzz_loader --cases 5000 --seed 0 [--jobs 2] [--timeout 60] [--subprocess]

Seeds are small real models written the ways models arrive: the digits ViT and tiny BERT
(``graphopt.models``; inline weights and weights as external data), a tiny legacy-spelled BERT
(``synthetic_bert``: Shape/Gather/Concat chains) and a hand-written MLP. Each case takes one seed
and one mutation, deterministic in ``(seed, case)``:

- bytes: bit flips, random bytes, truncation, a duplicated / deleted / moved chunk (in the model
  file, or in the external-data file);
- protobuf fields (through ``onnx`` protos, then serialized): data-type enums of initializers
  and inputs/outputs, ``op_type`` / names replaced by arbitrary bytes (invalid UTF-8 included),
  dims (negative, zero, huge), opset and IR versions, attribute values, node inputs/outputs
  rewired (undefined values, duplicate writers, cycles), graph outputs duplicated;
- external data: ``offset`` / ``length`` / ``location`` rewritten (negative, past the end, not a
  number, absolute, ``..``), the data file truncated or removed.

Each mutant runs ``inspect`` and, when inspect accepted it (and for 1 case in 10 otherwise),
``compile --passes canonicalize --bench-runs 0`` (validation on: ONNX Runtime runs it), unless its
inputs hold over 2^20 elements (a big batch is minutes of real work: "skipped: large inputs"). A case
fails when a command exits outside {0, 1, 2, 3, 4}, an exception escapes ``main``, the output
holds a traceback, the process dies, or it runs past ``--timeout``. By default the CLI runs
in-process (``graphopt.cli.main``) in ``--jobs`` worker processes that the driver replaces when
one dies or hangs; ``--subprocess`` runs ``python -m graphopt`` per command instead.
Prints the exit-code histogram per command, and each failure with the command to replay it
(``--keep DIR`` keeps every failing mutant there).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import logging
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnx

OK_CODES = {0, 1, 2, 3, 4}
SEEDS = ("mlp", "digits-vit", "digits-vit-ext", "tiny-bert-ext", "synthetic-bert", "synthetic-bert-ext", "tiny-bert")
_MLP = """
<ir_version: 8, opset_import: ["" : 17]>
mlp (float[N, 4] x) => (float[N, 3] y) <float[4, 3] w = {0.1, -0.2, 0.3, 0.4, 0.5, -0.6, 0.7, 0.8, -0.9, 1.0, 1.1, 1.2}, float[3] b = {0.5, -0.5, 0.25}> {
    xi = Identity(x)
    h = MatMul(xi, w)
    y0 = Add(h, b)
    s = Softmax <axis = -1> (y0)
    y = Mul(s, b)
}
"""


# --- seeds ------------------------------------------------------------------------------------


def _save(model: onnx.ModelProto, folder: str, external: bool) -> None:
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "model.onnx")
    if external:
        onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location="model.onnx.data",
                  size_threshold=256)
    else:
        onnx.save(model, path)


def build_seeds(folder: str, names=SEEDS) -> dict[str, str]:
    """Write each seed model into ``folder/<name>/`` (model.onnx, maybe model.onnx.data)."""
    import onnx.parser  # noqa: PLC0415

    seeds = {}
    for name in names:
        target = os.path.join(folder, name)
        if os.path.exists(os.path.join(target, "model.onnx")):
            seeds[name] = target
            continue
        external = name.endswith("-ext")
        base = name.removesuffix("-ext")
        if base == "mlp":
            model = onnx.parser.parse_model(_MLP)
        elif base == "synthetic-bert":
            from graphopt.models import synthetic_bert  # noqa: PLC0415

            model = synthetic_bert.build(layers=1, hidden=16, heads=2, intermediate=32, vocab=128, seq_len=8)
        else:
            model = _registry_build(base)
        _save(model, target, external)
        seeds[name] = target
    return seeds


def _registry_build(name: str) -> onnx.ModelProto:
    from graphopt.models import digits_vit, tiny_bert  # noqa: PLC0415

    return {"digits-vit": digits_vit, "tiny-bert": tiny_bert}[name].build()


# --- mutations --------------------------------------------------------------------------------


def _flip_bits(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 4, 16))):
        position = rng.randrange(len(out))
        out[position] ^= 1 << rng.randrange(8)
    return bytes(out)


def _random_bytes(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    start = rng.randrange(len(out))
    for i in range(start, min(len(out), start + rng.choice((1, 2, 4, 8, 32)))):
        out[i] = rng.choice((0, 0xFF, 0x80, 0x7F, rng.randrange(256)))
    return bytes(out)


def _truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(len(data))]


def _duplicate_chunk(data: bytes, rng: random.Random) -> bytes:
    a = rng.randrange(len(data))
    b = min(len(data), a + rng.choice((1, 4, 16, 64, 512, 4096)))
    at = rng.randrange(len(data) + 1)
    return data[:at] + data[a:b] + data[at:]


def _delete_chunk(data: bytes, rng: random.Random) -> bytes:
    a = rng.randrange(len(data))
    b = min(len(data), a + rng.choice((1, 4, 16, 64, 512)))
    return data[:a] + data[b:]


def _move_chunk(data: bytes, rng: random.Random) -> bytes:
    a = rng.randrange(len(data))
    b = min(len(data), a + rng.choice((4, 16, 64, 512)))
    rest = data[:a] + data[b:]
    at = rng.randrange(len(rest) + 1)
    return rest[:at] + data[a:b] + rest[at:]


BYTE_MUTATIONS = (_flip_bits, _random_bytes, _truncate, _duplicate_chunk, _delete_chunk, _move_chunk)
_INTERESTING_INTS = (-1, 0, 1, 2, 7, 255, 1 << 20, 1 << 31, (1 << 31) - 1, 1 << 40, (1 << 63) - 1, -(1 << 63))
_INTERESTING_TEXT = ("", "x", "a" * 300, "\n", "[/b]", "../up", "/abs", "\x00", "ai.onnx", "com.microsoft", "µ", "Relu")


def _all_graphs(graph: onnx.GraphProto):
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _all_graphs(attr.g)
            for g in attr.graphs:
                yield from _all_graphs(g)


def _tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    found = []
    for graph in _all_graphs(model.graph):
        found.extend(graph.initializer)
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    found.append(attr.t)
    return found


def _value_infos(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    g = model.graph
    return [*g.input, *g.output, *g.value_info]


def _proto_mutation(model: onnx.ModelProto, rng: random.Random) -> str:
    """Mutate ``model`` in place; return what was done."""
    nodes = list(model.graph.node)
    node = rng.choice(nodes) if nodes else None
    tensors = _tensors(model)
    kind = rng.choice((
        "dtype", "elem-type", "dims", "input-dims", "opset", "ir-version", "attr-int", "attr-type", "rewire-input",
        "duplicate-output", "cycle", "duplicate-graph-output", "op-domain", "name-text", "drop-initializer",
        "tensor-data", "op-type-text",
    ))
    if kind == "dtype" and tensors:
        rng.choice(tensors).data_type = rng.choice((*range(-1, 30), 77, 1 << 20))
    elif kind == "elem-type":
        value = rng.choice(_value_infos(model))
        value.type.tensor_type.elem_type = rng.choice((*range(-1, 30), 99))
    elif kind == "dims" and tensors:
        tensor = rng.choice(tensors)
        if tensor.dims:
            tensor.dims[rng.randrange(len(tensor.dims))] = rng.choice(_INTERESTING_INTS)
        else:
            tensor.dims.append(rng.choice(_INTERESTING_INTS))
    elif kind == "input-dims":
        value = rng.choice(_value_infos(model))
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[rng.randrange(len(dims))].dim_value = rng.choice(_INTERESTING_INTS)
    elif kind == "opset":
        entry = rng.choice(list(model.opset_import))
        entry.version = rng.choice((-1, 0, 1, 6, 13, 17, 18, 21, 23, 24, 25, 99, 1 << 40))
    elif kind == "ir-version":
        model.ir_version = rng.choice((-1, 0, 1, 3, 4, 7, 10, 11, 12, 99))
    elif kind == "attr-int" and node is not None and node.attribute:
        attr = rng.choice(list(node.attribute))
        if attr.ints:
            attr.ints[rng.randrange(len(attr.ints))] = rng.choice(_INTERESTING_INTS)
        else:
            attr.i = rng.choice(_INTERESTING_INTS)
    elif kind == "attr-type" and node is not None and node.attribute:
        rng.choice(list(node.attribute)).type = rng.choice(list(onnx.AttributeProto.AttributeType.values()))
    elif kind == "rewire-input" and node is not None and node.input:
        values = [o for n in nodes for o in n.output] + [i.name for i in model.graph.input] + ["ghost", ""]
        node.input[rng.randrange(len(node.input))] = rng.choice(values)
    elif kind == "duplicate-output" and len(nodes) > 1:
        other = rng.choice(nodes)
        if node.output and other.output:
            node.output[0] = other.output[0]
    elif kind == "cycle" and len(nodes) > 1:
        late = nodes[rng.randrange(len(nodes) // 2, len(nodes))]
        early = nodes[rng.randrange(len(nodes) // 2)]
        if early.input and late.output:
            early.input[0] = late.output[0]
    elif kind == "duplicate-graph-output" and model.graph.output:
        model.graph.output.append(model.graph.output[0])
    elif kind == "op-domain" and node is not None:
        node.domain = rng.choice(("my.custom", "com.microsoft", "ai.onnx.ml", "pkg.graphopt", "ai.onnx"))
    elif kind == "name-text" and node is not None and node.output:
        name = node.output[0]
        new = rng.choice(_INTERESTING_TEXT) + name
        for n in nodes:
            n.input[:] = [new if i == name else i for i in n.input]
        node.output[0] = new
        for value in model.graph.output:
            if value.name == name:
                value.name = new
    elif kind == "drop-initializer" and model.graph.initializer:
        del model.graph.initializer[rng.randrange(len(model.graph.initializer))]
    elif kind == "tensor-data" and tensors:
        tensor = rng.choice(tensors)
        if tensor.HasField("raw_data"):
            tensor.raw_data = tensor.raw_data[: rng.randrange(len(tensor.raw_data) + 1)]
        elif tensor.float_data:
            del tensor.float_data[rng.randrange(len(tensor.float_data)):]
        elif tensor.int64_data:
            tensor.int64_data.append(rng.choice(_INTERESTING_INTS))
    elif kind == "op-type-text" and node is not None:
        node.op_type = rng.choice(("Relu", "Foo", "", "MatMul", "LayerNormalization", "Gelu", "Attention", "If"))
    else:
        kind = f"{kind} (not applicable: unchanged)"
    return kind


_MARK = b"\x00graphopt-fuzz-mark\x00"


def _text_bytes_mutation(model: onnx.ModelProto, rng: random.Random) -> tuple[bytes, str]:
    """Replace an op_type / node name / tensor name by arbitrary bytes (invalid UTF-8 included)."""
    nodes = list(model.graph.node)
    target = rng.choice(("op_type", "name", "tensor"))
    garbage = bytes(rng.choice((0xFF, 0xFE, 0xC0, 0x80, 0xED, 0xA0, 0x00, 0x41)) for _ in range(rng.choice((1, 3, 8))))
    if target == "tensor" and model.graph.initializer:
        tensor = rng.choice(list(model.graph.initializer))
        old = tensor.name.encode()
        data = model.SerializeToString()
        return (data.replace(old, garbage[: len(old)].ljust(len(old), b"\xff")) if old else data), "tensor-name bytes"
    node = rng.choice(nodes)
    if target == "op_type":
        node.op_type = _MARK.decode()
    else:
        node.name = _MARK.decode()
    return model.SerializeToString().replace(_MARK, garbage), f"{target} bytes"


def _external_mutation(folder: str, rng: random.Random) -> str:
    path = os.path.join(folder, "model.onnx")
    model = onnx.load(path, load_external_data=False)
    external = [t for t in _tensors(model) if t.data_location == onnx.TensorProto.EXTERNAL]
    data_path = os.path.join(folder, "model.onnx.data")
    kind = rng.choice(("offset", "length", "location", "truncate-data", "remove-data", "drop-key", "data-bytes"))
    if kind == "truncate-data" and os.path.exists(data_path):
        size = os.path.getsize(data_path)
        with open(data_path, "r+b") as f:
            f.truncate(rng.randrange(size) if size else 0)
        return kind
    if kind == "remove-data" and os.path.exists(data_path):
        os.unlink(data_path)
        return kind
    if kind == "data-bytes" and os.path.exists(data_path):
        with open(data_path, "rb") as f:
            data = f.read()
        with open(data_path, "wb") as f:
            f.write(rng.choice(BYTE_MUTATIONS)(data, rng) if data else data)
        return kind
    if not external:
        return f"{kind} (no external tensor: unchanged)"
    tensor = rng.choice(external)
    entries = {e.key: e for e in tensor.external_data}
    if kind == "drop-key" and entries:
        key = rng.choice(sorted(entries))
        kept = [(e.key, e.value) for e in tensor.external_data if e.key != key]
        del tensor.external_data[:]
        for k, v in kept:
            entry = tensor.external_data.add()
            entry.key, entry.value = k, v
        kind = f"drop-key {key}"
    elif kind in ("offset", "length"):
        value = rng.choice(("-8", "-1", "0", "1", "3", "99999999999", "1e3", "zero", "", str(1 << 64), " 4"))
        if kind in entries:
            entries[kind].value = value
        else:
            entry = tensor.external_data.add()
            entry.key, entry.value = kind, value
        kind = f"{kind}={value!r}"
    elif kind == "location":
        value = rng.choice(("../model.onnx.data", "/etc/passwd", "", "missing.bin", "model.onnx", ".", "sub/x.bin",
                            "model.onnx.data\x00x"))
        entries["location"].value = value
        kind = f"location={value!r}"
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
    return kind


def make_case(seeds: dict[str, str], case_dir: str, seed: int, case: int) -> str:
    """Write mutant ``case`` (of fuzz seed ``seed``) into ``case_dir``; return its description."""
    rng = random.Random(f"{seed}:{case}")
    name = rng.choice(sorted(seeds))
    shutil.copytree(seeds[name], case_dir, dirs_exist_ok=True)
    path = os.path.join(case_dir, "model.onnx")
    family = rng.choice(("bytes", "bytes", "proto", "proto", "text", "external") if name.endswith("-ext")
                        else ("bytes", "bytes", "proto", "proto", "text"))
    if family == "bytes":
        with open(path, "rb") as f:
            data = f.read()
        mutation = rng.choice(BYTE_MUTATIONS)
        with open(path, "wb") as f:
            f.write(mutation(data, rng))
        what = mutation.__name__.lstrip("_")
    elif family == "external":
        what = _external_mutation(case_dir, rng)
    else:
        model = onnx.load(path, load_external_data=False)
        if family == "proto":
            what = _proto_mutation(model, rng)
            for _ in range(rng.choice((0, 0, 0, 1))):  # sometimes two at once
                what += " + " + _proto_mutation(model, rng)
            data = model.SerializeToString()
        else:
            data, what = _text_bytes_mutation(model, rng)
        with open(path, "wb") as f:
            f.write(data)
    return f"{name}: {family} {what}"


# --- running ----------------------------------------------------------------------------------


class _Timeout(BaseException):
    """Raised by SIGALRM inside a case (BaseException: the CLI's `except Exception` lets it pass)."""


def _on_alarm(signum, frame):
    raise _Timeout


def run_in_process(argv: list[str], timeout: float) -> tuple[int | str, str]:
    """``graphopt.cli.main(argv)`` with stdout/stderr captured: (exit code or failure kind, stderr)."""
    from graphopt import cli  # noqa: PLC0415

    out, err = io.StringIO(), io.StringIO()
    logging.getLogger().handlers.clear()  # main's logging.basicConfig then writes to this case's stderr
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(argv)
    except _Timeout:
        return "timeout", err.getvalue()
    except BaseException as e:  # noqa: BLE001 — escaping main at all is the failure being looked for
        return "escaped", f"{type(e).__name__}: {e}\n{err.getvalue()}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    return code, err.getvalue()


def run_subprocess(argv: list[str], timeout: float) -> tuple[int | str, str]:
    try:
        result = subprocess.run([sys.executable, "-m", "graphopt", *argv], capture_output=True, text=True, timeout=timeout,
                                errors="replace")
    except subprocess.TimeoutExpired:
        return "timeout", ""
    if result.returncode < 0:
        return f"signal {-result.returncode}", result.stderr
    return result.returncode, result.stderr


# Mutated dims can declare a valid but heavy model (input_ids [1048576, 8]): compiling it runs
# ONNX Runtime on that batch several times, minutes of real work that a per-case timeout would
# call a hang. Such mutants are inspected only (the loader is what is under test); the input
# size limits that refuse absurd shapes are graphopt.validity's.
MAX_COMPILE_INPUT_ELEMENTS = 1 << 20


def _declared_input_elements(path: str) -> int:
    """Elements of every graph input as synthetic data would make them (first symbolic dim 1,
    others 16); 0 when the file does not parse."""
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception:  # noqa: BLE001
        return 0
    weights = {t.name for t in model.graph.initializer}
    total = 0
    for value in model.graph.input:
        if value.name in weights:
            continue
        count = 1
        for i, dim in enumerate(value.type.tensor_type.shape.dim):
            count *= dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else (1 if i == 0 else 16)
        total += count
    return total


def _verdict(code, stderr: str) -> str | None:
    """None when the outcome is acceptable, else why not."""
    if not isinstance(code, int):
        return str(code)
    if code not in OK_CODES:
        return f"exit {code}"
    if "Traceback (most recent call last)" in stderr:
        return "traceback"
    return None


def run_case(seeds: dict[str, str], work: str, seed: int, case: int, timeout: float, use_subprocess: bool,
             compile_all: bool = False) -> dict:
    case_dir = os.path.join(work, f"case-{case}")
    shutil.rmtree(case_dir, ignore_errors=True)
    os.makedirs(case_dir)
    try:
        what = make_case(seeds, case_dir, seed, case)
        model = os.path.join(case_dir, "model.onnx")
        runner = run_subprocess if use_subprocess else run_in_process
        result = {"case": case, "what": what, "codes": {}, "failures": []}
        commands = [("inspect", ["inspect", model])]
        rng = random.Random(f"{seed}:{case}:compile")
        compile_argv = ["compile", model, "-o", os.path.join(case_dir, "out"), "--passes", "canonicalize", "--bench-runs", "0",
                        "--quiet"]
        for name, argv in commands:
            code, stderr = runner(argv, timeout)
            result["codes"][name] = code
            bad = _verdict(code, stderr)
            if bad:
                result["failures"].append({"command": name, "why": bad, "stderr": stderr.strip()[-600:]})
        large = _declared_input_elements(model) > MAX_COMPILE_INPUT_ELEMENTS
        if large:  # a valid model with a big batch is real work, not a hang: inspect only
            result["codes"]["compile"] = "skipped: large inputs"
        elif compile_all or result["codes"]["inspect"] == 0 or rng.random() < 0.1:
            code, stderr = runner(compile_argv, timeout)
            result["codes"]["compile"] = code
            bad = _verdict(code, stderr)
            if bad:
                result["failures"].append({"command": "compile", "why": bad, "stderr": stderr.strip()[-600:]})
        return result
    finally:
        shutil.rmtree(case_dir, ignore_errors=True)


def _worker(conn, seeds, work, seed, timeout, use_subprocess, compile_all):
    import warnings  # noqa: PLC0415

    warnings.simplefilter("ignore")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # ONNX Runtime logs kernel failures from C++ straight to fd 2; what the CLI prints goes through
    # sys.stderr, which each case captures, so the worker's fd 2 can go
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    while True:
        case = conn.recv()
        if case is None:
            return
        conn.send(run_case(seeds, work, seed, case, timeout, use_subprocess, compile_all))


class _Pool:
    """Worker processes fed one case at a time; a worker that dies or hangs is replaced."""

    def __init__(self, jobs: int, args: tuple, timeout: float) -> None:
        self.args = args
        self.limit = timeout * 2.5 + 30  # inspect + compile, each under its own alarm
        self.context = multiprocessing.get_context("fork")
        self.workers = [self._start() for _ in range(jobs)]

    def _start(self):
        parent, child = self.context.Pipe()
        process = self.context.Process(target=_worker, args=(child, *self.args), daemon=True)
        process.start()
        child.close()
        return [process, parent, None, 0.0]

    def run(self, cases, on_result) -> None:
        pending = list(cases)[::-1]
        while pending or any(w[2] is not None for w in self.workers):
            for i, worker in enumerate(self.workers):
                process, conn, case, started = worker
                if case is None and pending:
                    worker[2], worker[3] = pending.pop(), time.monotonic()
                    conn.send(worker[2])
                    continue
                if case is None:
                    continue
                try:
                    ready = conn.poll(0.01)
                    if ready:
                        on_result(conn.recv())
                        worker[2] = None
                        continue
                except (EOFError, OSError):
                    ready = False
                dead = not process.is_alive()
                if dead or time.monotonic() - started > self.limit:
                    why = f"worker died (exit {process.exitcode})" if dead else "hang (worker killed)"
                    process.kill()
                    process.join()
                    on_result({"case": case, "what": "?", "codes": {"inspect": why},
                               "failures": [{"command": "?", "why": why, "stderr": ""}]})
                    self.workers[i] = self._start()

    def close(self) -> None:
        for process, conn, _, _ in self.workers:
            with contextlib.suppress(OSError, BrokenPipeError):
                conn.send(None)
            process.join(timeout=5)
            if process.is_alive():
                process.kill()


def fuzz(cases: int, seed: int = 0, jobs: int = 1, timeout: float = 60.0, use_subprocess: bool = False,
         seeds_dir: str | None = None, keep: str | None = None, progress: bool = False, compile_all: bool = False,
         first_case: int = 0) -> dict:
    """Run ``cases`` mutants; return {"histogram": {command: Counter}, "failures": [...], "seconds": s}."""
    start = time.perf_counter()
    own_seeds = seeds_dir is None
    seeds_dir = seeds_dir or tempfile.mkdtemp(prefix="graphopt-fuzz-seeds-")
    work = tempfile.mkdtemp(prefix="graphopt-fuzz-")
    histogram: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    failures: list[dict] = []
    done = [0]
    try:
        # built in a fresh process: torch (the reference models' exporter) is never imported in the
        # driver, whose workers are forked from it
        builder = multiprocessing.get_context("spawn").Process(target=build_seeds, args=(seeds_dir,))
        builder.start()
        builder.join()
        if builder.exitcode != 0:
            raise RuntimeError(f"building the seed models failed (exit {builder.exitcode})")
        seeds = build_seeds(seeds_dir)  # now only lists them

        def on_result(result: dict) -> None:
            done[0] += 1
            for command, code in result["codes"].items():
                histogram[command][code] += 1
            if result["failures"]:
                failures.append(result)
                if keep:
                    folder = os.path.join(keep, f"case-{result['case']}")
                    make_case(seeds, folder, seed, result["case"]) if result["what"] != "?" else None
            if progress and done[0] % 100 == 0:
                print(f"  {done[0]}/{cases} cases, {len(failures)} failing, {time.perf_counter() - start:.0f} s",
                      file=sys.stderr, flush=True)

        indices = range(first_case, first_case + cases)
        if jobs <= 1 and use_subprocess:
            for case in indices:
                on_result(run_case(seeds, work, seed, case, timeout, True, compile_all))
        else:
            pool = _Pool(max(jobs, 1), (seeds, work, seed, timeout, use_subprocess, compile_all), timeout)
            try:
                pool.run(indices, on_result)
            finally:
                pool.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if own_seeds:
            shutil.rmtree(seeds_dir, ignore_errors=True)
    failures.sort(key=lambda r: r["case"])
    return {"histogram": {k: dict(v) for k, v in histogram.items()}, "failures": failures,
            "seconds": time.perf_counter() - start, "cases": cases}


def _format_histogram(histogram: dict) -> list[str]:
    lines = []
    for command in sorted(histogram):
        counts = histogram[command]
        cells = ", ".join(f"{code}: {n}" for code, n in sorted(counts.items(), key=lambda kv: str(kv[0])))
        lines.append(f"  {command:<8} {sum(counts.values()):>6} runs   exit codes {{{cells}}}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fuzz_loader", description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--first-case", type=int, default=0, help="index of the first case (replay one with --cases 1)")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="worker processes (default 2)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per command before it counts as a hang")
    parser.add_argument("--subprocess", action="store_true", help="run `python -m graphopt` per command (slower)")
    parser.add_argument("--compile-all", action="store_true", help="also compile mutants that inspect refused")
    parser.add_argument("--seeds-dir", help="folder for the seed models (built on first use, reused after)")
    parser.add_argument("--keep", help="write every failing mutant into this folder")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    result = fuzz(args.cases, args.seed, args.jobs, args.timeout, args.subprocess, args.seeds_dir, args.keep,
                  progress=not args.quiet, compile_all=args.compile_all, first_case=args.first_case)
    print(f"loader fuzz: {args.cases} cases (seed {args.seed}, {'subprocess' if args.subprocess else 'in-process'}, "
          f"{args.jobs} jobs) in {result['seconds']:.0f} s")
    print("\n".join(_format_histogram(result["histogram"])))
    failures = result["failures"]
    print(f"failures: {len(failures)}")
    for failure in failures:
        for f in failure["failures"]:
            last = f["stderr"].splitlines()[-1] if f["stderr"] else ""
            print(f"  case {failure['case']} ({failure['what']}): {f['command']} {f['why']}: {last[:300]}")
            print(f"    replay: python -m bench.fuzz_loader --seed {args.seed} --first-case {failure['case']} --cases 1 --jobs 1")
    return 1 if failures else 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
