"""graphopt's native TVM kernels agree with the ops' numpy references and ONNX Runtime.

Every graphopt op's converter (``graphopt.backends.tvm.kernels.CONVERTERS``) is built into a one-op
Relax function, compiled for ``llvm`` with TVM's default pipeline and run on the op's
``examples()`` and on seeded random cases: integer ops must be bit-exact with the reference and
with ONNX Runtime running the op's ONNX body, float ops within 1e-5. Integer kernels must contain
no float at all. Standard ONNX integer ops of the ivit graphs go through the graphopt importer and
must match ONNX Runtime exactly; the slow test does that for the whole integer-only MiniLM.
"""

from __future__ import annotations

import re

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

tvm = pytest.importorskip("tvm")
from tvm import relax, te  # noqa: E402

from graphopt import ops, testing  # noqa: E402
from graphopt.backends.tvm import importer  # noqa: E402
from graphopt.backends.tvm.kernels import CONVERTERS, TE_KERNELS  # noqa: E402
from graphopt.ops.dyadic_requant import dyadic_multiplier  # noqa: E402

LLVM = {"kind": "llvm"}
INTEGER_OPS = ["DyadicRequant", "Shiftmax", "ShiftGelu", "IntLayerNorm"]
FLOAT_OPS = ["DotProductAttention", "SigmoidLinearUnit", "LinearizedAttention", "WindowedLinearAttention"]


# --- running one graphopt op through its converter -------------------------------------------------


def _run_converter(op_name: str, inputs: tuple, attrs: dict, constant_inputs: tuple[int, ...] = ()) -> np.ndarray:
    """Build ``main(inputs) = CONVERTERS[op](...)``, compile for llvm, run. Inputs listed in
    ``constant_inputs`` enter as Relax constants (as initializers do in the importer)."""
    bb = relax.BlockBuilder()
    params, args = [], []
    for i, value in enumerate(inputs):
        array = np.asarray(value)
        if i in constant_inputs:
            args.append(relax.const(array))
        else:
            var = relax.Var(f"in{i}", relax.TensorType(array.shape, str(array.dtype)))
            params.append((var, array))
            args.append(var)
    with bb.function("main", [p for p, _ in params]):
        with bb.dataflow():
            # the importer hands TVM's bookkeeping entry too; converters must ignore it
            out = bb.emit_output(CONVERTERS[op_name](bb, args, {**attrs, "tvm_custom": {"name": "n0", "num_outputs": 1}}))
        bb.emit_func_output(out)
    executable = tvm.compile(bb.get(), target=tvm.target.Target(LLVM))
    vm = relax.VirtualMachine(executable, tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(a) for _, a in params]).numpy()


def _one_node_model(op: ops.OpDef, inputs: tuple, attrs: dict) -> ir.Model:
    values = [ir.val(f"in{i}", ir.DataType.from_numpy(np.asarray(a).dtype), ir.Shape(np.shape(a))) for i, a in enumerate(inputs)]
    plain = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in attrs.items()}
    node = ir.node(op.name, values, attributes=plain, domain=ops.DOMAIN)
    node.outputs[0].name = "out0"
    graph = ir.Graph(values, node.outputs, nodes=[node], opset_imports={"": 23}, name="one_op")
    model = ir.Model(graph, ir_version=10)
    ops.attach_functions(model)
    return model


def _assert_matches(op_name: str, inputs: tuple, attrs: dict, constant_inputs: tuple[int, ...] = (), ort: bool = True):
    op = ops.get_op(op_name)
    got = _run_converter(op_name, inputs, attrs, constant_inputs)
    expected = np.asarray(op.reference(*inputs, **attrs))
    assert got.dtype == expected.dtype and got.shape == expected.shape
    from_ort = testing.run_ort(_one_node_model(op, inputs, attrs), {f"in{i}": np.asarray(a) for i, a in enumerate(inputs)})[0] if ort else None
    if expected.dtype.kind in "iu":
        np.testing.assert_array_equal(got, expected)  # bit-exact with the spec ...
        if ort:
            np.testing.assert_array_equal(got, from_ort)  # ... and with the ONNX body
    else:
        tol = 2e-3 if expected.dtype == np.float16 else 1e-5
        np.testing.assert_allclose(got, expected, rtol=tol, atol=tol)
        if ort:
            np.testing.assert_allclose(got, from_ort, rtol=tol, atol=tol)


@pytest.mark.parametrize("op_name", INTEGER_OPS + FLOAT_OPS)
def test_every_graphopt_op_has_a_converter_and_te_kernel(op_name):
    assert {op.name for op in ops.list_ops()} <= set(CONVERTERS)
    assert op_name in CONVERTERS and op_name in TE_KERNELS


@pytest.mark.parametrize("op_name", INTEGER_OPS + FLOAT_OPS)
def test_examples_match_reference_and_onnx_runtime(op_name):
    for inputs, attrs in ops.get_op(op_name).examples():
        _assert_matches(op_name, inputs, attrs)


# --- seeded random cases, inside each op's documented contract ---------------------------------------


def test_dyadic_requant_random_and_constant_operands():
    rng = np.random.default_rng(testing.SEED)
    for trial in range(3):
        x = rng.integers(-(2**31), 2**31, (3, 5, 7)).astype(np.int32)
        m, k = dyadic_multiplier(rng.uniform(-1e-3, 1e-3, 7) * 10.0 ** rng.integers(-4, 4))
        out_bits = int(rng.choice([8, 16, 32]))
        _assert_matches("DyadicRequant", (x, m, k), {"out_bits": out_bits}, ort=trial == 0)
        # per-channel constants (stay tensors) and per-tensor constants (become immediates)
        _assert_matches("DyadicRequant", (x, m, k), {"out_bits": out_bits}, constant_inputs=(1, 2), ort=False)
        m1, k1 = dyadic_multiplier(np.array(rng.uniform(1e-6, 10.0)))
        _assert_matches("DyadicRequant", (x, m1, k1), {"out_bits": out_bits}, constant_inputs=(1, 2), ort=False)
    m0, k0 = np.array([[5]], np.int32), np.array([0], np.int32)  # K = 0 as a constant: no rounding term
    _assert_matches("DyadicRequant", (x, m0, k0), {}, constant_inputs=(1, 2), ort=False)


def test_shiftmax_random():
    rng = np.random.default_rng(testing.SEED + 1)
    for trial in range(4):
        x0, n = int(rng.integers(-64, 0)), int(rng.integers(8, 17))
        width = int(rng.integers(1, 48))
        x = rng.integers(-(2**15), 2**15, (2, 3, width)).astype(np.int32)
        attrs = {"x0": x0, "n": n, "out_bits": int(rng.integers(2, 17))}
        _assert_matches("Shiftmax", (x,), attrs, ort=trial == 0)


def test_shiftmax_mask_below():
    """mask_below (the ivit preset's -127: saturated mask fills get weight 0), both kernel paths, bit-exact."""
    from graphopt.backends.tvm.kernels import shiftmax  # noqa: PLC0415

    rng = np.random.default_rng(testing.SEED + 14)
    scores = rng.integers(-127, 128, (2, 3, 16))
    causal = np.tril(np.ones((16, 16), bool))[:3]
    x = np.where(causal, scores, -128).astype(np.int32)
    x[1, 2] = -128  # a fully masked row: all zeros
    for x0, n in ((-300, 15), (-13, 15), (-1, 30)):  # -1, 30: the int64 path
        attrs = {"x0": x0, "n": n, "out_bits": 16, "mask_below": -127}
        _assert_matches("Shiftmax", (x,), attrs, ort=x0 == -300)
        _assert_kernel_exact("Shiftmax", shiftmax.shiftmax, (x,), attrs)
    got = ops.get_op("Shiftmax").reference(x, x0=-300, n=15, mask_below=-127)
    assert (got[~np.broadcast_to(causal, x.shape)] == 0).all() and (got[1, 2] == 0).all()


def test_shiftgelu_random():
    rng = np.random.default_rng(testing.SEED + 2)
    for trial in range(4):
        x0, n = int(rng.integers(-600, 0)), int(rng.integers(8, 20))
        x = rng.integers(-(2**12), 2**12, (3, int(rng.integers(1, 40)))).astype(np.int32)
        attrs = {"x0": x0, "n": n, "out_bits": int(rng.choice([8, 16])), "row_max": trial % 2}
        _assert_matches("ShiftGelu", (x,), attrs, ort=trial < 2)


def test_int_layer_norm_random_and_constant_affine():
    rng = np.random.default_rng(testing.SEED + 3)
    for trial in range(3):
        d = int(rng.integers(2, 97))
        x = rng.integers(-32768, 32768, (2, 3, d)).astype(np.int32)
        mult = rng.integers(-(2**15), 2**15 + 1, d).astype(np.int32)
        bias = rng.integers(-(2**20), 2**20 + 1, d).astype(np.int32)
        attrs = {"shift": int(rng.integers(0, 31))}
        _assert_matches("IntLayerNorm", (x, mult, bias), attrs, ort=trial == 0)
    _assert_matches("IntLayerNorm", (x, mult, bias), {}, constant_inputs=(1, 2), ort=False)  # default shift


def test_int_layer_norm_rms_mode():
    """center=0 (integer RMSNorm): random int16 rows, offset rows, all-zero rows and extremes, bit-exact."""
    rng = np.random.default_rng(testing.SEED + 13)
    for trial in range(3):
        d = int(rng.integers(2, 97))
        x = rng.integers(-32768, 32768, (2, 3, d)).astype(np.int32)
        x[0, 0] = 0  # all-zero row: var = 0, y = 0
        x[1, 0] = 32767  # extremes
        x[1, 1, ::2] = -32768
        x[0, 1] += 20000 * (trial % 2)  # mean far from 0: RMSNorm keeps it
        mult = rng.integers(-(2**15), 2**15 + 1, d).astype(np.int32)
        bias = np.zeros(d, np.int32) if trial else rng.integers(-(2**20), 2**20 + 1, d).astype(np.int32)
        attrs = {"shift": int(rng.integers(0, 31)), "center": 0}
        _assert_matches("IntLayerNorm", (np.clip(x, -32768, 32767), mult, bias), attrs, ort=trial < 2)


def test_attention_random_shapes_and_flags():
    rng = np.random.default_rng(testing.SEED + 4)

    def randn(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    mask = np.where(rng.random((1, 1, 5, 7)) < 0.3, -np.inf, 0).astype(np.float32)
    _assert_matches("DotProductAttention", (randn(2, 3, 5, 8), randn(2, 3, 7, 8), randn(2, 3, 7, 4), mask),
                    {"scale": 0.3, "zero_masked_rows": 1, "nan_to_zero": 1})
    _assert_matches("DotProductAttention", (randn(4, 6, 8), randn(4, 6, 8), randn(4, 6, 8), randn(6, 6)),
                    {"scale": 0.7, "causal": 1, "softcap": 3.0}, ort=False)


def test_attention_without_mask_input():
    rng = np.random.default_rng(testing.SEED + 5)
    q, k, v = (rng.standard_normal((2, 4, 8)).astype(np.float32) for _ in range(3))
    bb = relax.BlockBuilder()
    params = [relax.Var(n, relax.TensorType(a.shape, "float32")) for n, a in zip("qkv", (q, k, v))]
    with bb.function("main", params):
        with bb.dataflow():
            out = bb.emit_output(CONVERTERS["DotProductAttention"](bb, [*params, None], {"scale": 0.5}))
        bb.emit_func_output(out)
    vm = relax.VirtualMachine(tvm.compile(bb.get(), target=tvm.target.Target(LLVM)), tvm.cpu())
    got = vm["main"](*[tvm.runtime.tensor(a) for a in (q, k, v)]).numpy()
    expected = ops.get_op("DotProductAttention").reference(q, k, v, np.float32(0), scale=0.5)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_silu_random():
    x = np.random.default_rng(testing.SEED + 6).standard_normal((3, 17)).astype(np.float32) * 20
    _assert_matches("SigmoidLinearUnit", (x,), {})


# --- the int32 / table / high-word fast paths at their edges ------------------------------------------
# (each compiled twice: plain LLVM and vectorized by graphopt's CPU rules for the host, where LLVM's
# int32 ``nsw`` assumptions and AVX2 lowering would show)

_I32 = np.iinfo(np.int32)
_HOST = tvm.target.Target({"kind": "llvm", "mcpu": str(tvm.target.codegen.llvm_get_system_cpu()), "num-cores": 2})


def _run_te(kernel, inputs: tuple, attrs: dict, target) -> np.ndarray:
    """``kernel(placeholders..., **attrs)`` as one PrimFunc, scheduled by graphopt's rules for ``target``
    when it has a CPU (``num-cores``), else unscheduled; run on ``inputs``."""
    from graphopt.backends.tvm.cpu import ApplyCpuSchedules  # noqa: PLC0415

    args = [te.placeholder(np.shape(a), str(np.asarray(a).dtype), name=f"in{i}") for i, a in enumerate(inputs)]
    out = kernel(*args, **attrs)
    mod = tvm.IRModule({"main": te.create_prim_func([*args, out]).with_attr("global_symbol", "main")})
    if target.attrs.get("num-cores"):
        mod = ApplyCpuSchedules(target)(mod)
    lib = tvm.compile(mod, target=target)
    result = tvm.runtime.tensor(np.zeros([int(d) for d in out.shape], str(out.dtype)))
    lib["main"](*[tvm.runtime.tensor(np.asarray(a)) for a in inputs], result)
    return result.numpy()


def _assert_kernel_exact(op_name: str, kernel, inputs: tuple, attrs: dict, kernel_attrs: dict | None = None):
    expected = ops.get_op(op_name).reference(*inputs, **attrs)
    for target in (tvm.target.Target(LLVM), _HOST):
        got = _run_te(kernel, inputs, {**attrs, **(kernel_attrs or {})}, target)
        np.testing.assert_array_equal(got, expected, err_msg=f"{op_name} {attrs} on {target}")


def _edge_rows(width: int) -> np.ndarray:
    """int32 rows at the extremes: the full range, all-minimum / all-maximum rows, ±2^29 (the int32
    ShiftExp clamp), small values around 0."""
    edges = [_I32.min, _I32.min + 1, _I32.max, _I32.max - 1, 0, 1, -1, 2**29, -(2**29), 2**29 + 1, -(2**29) - 1, 127, -128]
    rows = [np.resize(np.array(edges, np.int64), width), np.full(width, _I32.min), np.full(width, _I32.max),
            np.resize(np.array([_I32.min, _I32.min + 5, _I32.min + 2**29]), width),
            np.arange(width) - width // 2]
    return np.stack(rows).astype(np.int32)


@pytest.mark.parametrize("x0,n", [(-768, 8), (-1, 29), (-3, 28), (-5000, 15), (-(2**28), 1), (-1, 30), (-7, 27)])
def test_shiftgelu_int32_path_is_exact_at_the_extremes(x0, n):
    # (-1, 30), (-7, 27): 2·|x0|·2^n >= 2^31, the int64 fallback; the others take the int32 path
    from graphopt.backends.tvm.kernels import shiftgelu  # noqa: PLC0415

    x = _edge_rows(24)
    for row_max in (0, 1):
        for out_bits in (8, 16):
            _assert_kernel_exact("ShiftGelu", shiftgelu.shift_gelu, (x,), {"x0": x0, "n": n, "out_bits": out_bits, "row_max": row_max})


def test_shiftgelu_table_matches_the_reference_around_its_limit():
    from graphopt.backends.tvm.kernels import shiftgelu_table  # noqa: PLC0415

    for x0, n, out_bits in [(-768, 8, 8), (-8, 23, 8), (-587, 20, 16), (-1, 0, 8), (-30, 15, 16)]:
        limit, table = shiftgelu_table.sigma_table(x0, n, out_bits)
        around = np.arange(-limit - 3, limit + 4)
        x = np.concatenate([around, _edge_rows(13).reshape(-1)]).astype(np.int32).reshape(1, -1)
        attrs = {"x0": x0, "n": n, "out_bits": out_bits, "row_max": 0}
        _assert_matches("ShiftGelu", (x,), attrs, ort=False)  # the converter picks the table here
        expected = ops.get_op("ShiftGelu").reference(x, **attrs)
        for target in (tvm.target.Target(LLVM), _HOST):
            got = _run_te(shiftgelu_table.shift_gelu_lookup, (x, table), {"limit": limit}, target)
            np.testing.assert_array_equal(got, expected)
    assert shiftgelu_table.table_limit(-(2**20), 20) is None  # too big a table: the arithmetic kernel instead
    _assert_matches("ShiftGelu", (_edge_rows(8),), {"x0": -(2**20), "n": 9, "row_max": 0}, ort=False)


@pytest.mark.parametrize("x0,n", [(-3, 15), (-6, 15), (-1, 29), (-3, 28), (-1, 30), (-(2**29), 2)])
def test_shiftmax_int32_path_is_exact_at_the_extremes(x0, n):
    # width 128 with (-3, 15) sums in int32; (-1, 29), (-3, 28) sum in int64; (-1, 30), (-2^29, 2) are int64 throughout
    from graphopt.backends.tvm.kernels import shiftmax  # noqa: PLC0415

    rng = np.random.default_rng(testing.SEED + 8)
    for width in (7, 128):
        x = np.concatenate([_edge_rows(width), rng.integers(-(2**15), 2**15, (3, width))]).astype(np.int32)
        for out_bits in (8, 16, 31):
            _assert_kernel_exact("Shiftmax", shiftmax.shiftmax, (x,), {"x0": x0, "n": n, "out_bits": out_bits})


def test_dyadic_requant_high_word_path_is_exact_at_the_extremes():
    from graphopt.backends.tvm.kernels import dyadic_requant  # noqa: PLC0415

    rng = np.random.default_rng(testing.SEED + 9)
    edges = np.array([_I32.min, _I32.min + 1, _I32.max, -1, 0, 1, 2**15, -(2**15)], np.int32)
    x = np.concatenate([edges, rng.integers(_I32.min, _I32.max, 56, endpoint=True)]).astype(np.int32).reshape(8, 8)
    multipliers = [2**30, -(2**30), _I32.max, _I32.min, 0, 1, -1, 742467698]
    for out_bits in (8, 32):
        attrs = {"out_bits": out_bits}
        for k in (32, 47, 62, 31):  # 31: the int64 path, for contrast
            for m in (2**30, _I32.min, _I32.max, -1, 742467698):  # per-tensor (immediates); all of them per channel below
                m_arr, k_arr = np.array(m, np.int32), np.array(k, np.int32)
                expected = ops.get_op("DyadicRequant").reference(x, m_arr, k_arr, **attrs)
                for target in (tvm.target.Target(LLVM), _HOST):
                    got = _run_te(dyadic_requant.dyadic_requant, (x,), {"multiplier": m, "shift": k, **attrs}, target)
                    np.testing.assert_array_equal(got, expected, err_msg=f"m={m} k={k} out_bits={out_bits}")
        # per-channel constants: all shifts >= 32 (high word, variable int32 shift) and a mix (int64)
        m_c = np.array(multipliers, np.int32)
        for k_c in (np.array([32, 33, 40, 47, 50, 55, 61, 62], np.int32), np.array([30, 31, 32, 33, 29, 40, 62, 0], np.int32)):
            _assert_kernel_exact("DyadicRequant", dyadic_requant.dyadic_requant, (x, m_c, k_c), attrs,
                                 {"min_shift": int(k_c.min())})
            _assert_matches("DyadicRequant", (x, m_c, k_c), attrs, constant_inputs=(1, 2), ort=False)


def test_int32_kernels_have_no_64_bit_division():
    """ShiftGelu / Shiftmax with ivit's attributes: no scalar 64-bit division left (AVX2 cannot vectorize it)."""
    from graphopt.backends.tvm.kernels import shiftgelu, shiftmax  # noqa: PLC0415

    x = te.placeholder((4, 64), "int32", name="x")
    for out in (shiftgelu.shift_gelu(x, x0=-768, n=8, row_max=1), shiftmax.shiftmax(x, x0=-3, n=15)):
        lib = tvm.compile(tvm.IRModule({"main": te.create_prim_func([x, out]).with_attr("global_symbol", "main")}),
                          target=tvm.target.Target(LLVM))
        llvm_ir = lib.mod.inspect_source("ll") if hasattr(lib, "mod") else lib.inspect_source("ll")
        assert not re.search(r"\b[su]div i64\b|\b[su]rem i64\b", llvm_ir)


def test_attributes_are_checked():
    x = np.zeros((2, 4), np.int32)
    with pytest.raises(ValueError, match="required attribute"):
        _run_converter("Shiftmax", (x,), {"n": 15})
    with pytest.raises(ValueError, match="unknown attribute 'axis'"):
        _run_converter("Shiftmax", (x,), {"x0": -3, "axis": 0})


# --- no float in integer kernels -------------------------------------------------------------------

_FLOAT_TYPES = re.compile(r"\b(half|bfloat|float|double|fp128|x86_fp80)\b|float\d+|bfloat\d+")


def _integer_kernel_cases():
    x = te.placeholder((3, 16), "int32", name="x")
    channel = te.placeholder((16,), "int32", name="channel")
    bias = te.placeholder((16,), "int32", name="bias")
    return [
        ("DyadicRequant", [x, channel, bias], {"out_bits": 8}),
        ("Shiftmax", [x], {"x0": -13}),
        ("Shiftmax", [x], {"x0": -13, "mask_below": -127}),
        ("ShiftGelu", [x], {"x0": -8}),
        ("ShiftGelu", [x], {"x0": -8, "row_max": 0}),
        ("IntLayerNorm", [x, channel, bias], {"shift": 16}),
        ("IntLayerNorm", [x, channel, bias], {"shift": 16, "center": 0}),
    ]


@pytest.mark.parametrize("case", _integer_kernel_cases(), ids=lambda c: f"{c[0]}-{c[2]}")
def test_integer_kernels_contain_no_float(case):
    op_name, args, attrs = case
    func = te.create_prim_func([*args, TE_KERNELS[op_name](*args, **attrs)]).with_attr("global_symbol", "main")
    assert not _FLOAT_TYPES.search(func.script()), "float in the TIR"
    executable = tvm.compile(tvm.IRModule({"main": func}), target=tvm.target.Target(LLVM))
    llvm_ir = executable.mod.inspect_source("ll") if hasattr(executable, "mod") else executable.inspect_source("ll")
    # TVM links fp16<->fp32 conversion helpers into every module; only our functions matter
    functions = [f for f in llvm_ir.split("\ndefine ")[1:] if "tvm.fp16.conv" not in f.split("\n", 1)[0]]
    assert functions
    for body in functions:
        code = [line for line in body.splitlines() if not line.lstrip().startswith(("@", "!", ";"))]
        assert not any(_FLOAT_TYPES.search(line) for line in code), f"float in the LLVM IR of {body.split('(', 1)[0]}"


# --- standard ONNX ops of the ivit graphs, through the importer -------------------------------------


def _standard_case(op, inputs, attrs=None, constants=()):
    return op, inputs, attrs or {}, constants


def _standard_cases():
    rng = np.random.default_rng(testing.SEED + 7)
    ties = np.array([[-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 127.5, 128.5, -128.5, -129.5, 1e6, -1e6, 32767.5, -32768.5]], np.float32)
    x = np.concatenate([ties, (rng.standard_normal((3, ties.shape[1])) * 100).astype(np.float32)])
    a32 = rng.integers(-(2**31), 2**31, (4, 6), dtype=np.int64).astype(np.int32)
    b32 = rng.integers(-(2**31), 2**31, (4, 6), dtype=np.int64).astype(np.int32)
    wide = np.array([[0, 1, -1, 127, 128, -129, 255, 256, 2**31, -(2**31) - 1, 2**40 + 5, -(2**40) - 5]], np.int64)
    scales = np.array([0.5, 1.0, 2.0, 0.1], np.float32)
    table = rng.integers(-128, 128, (10, 5)).astype(np.int8)
    return {
        "QuantizeLinear-int8": _standard_case("QuantizeLinear", [x, np.float32(1.0), np.int8(3)], constants=(1, 2)),
        "QuantizeLinear-uint8-scaled": _standard_case("QuantizeLinear", [x, np.float32(0.37), np.uint8(100)], constants=(1, 2)),
        "QuantizeLinear-int16": _standard_case("QuantizeLinear", [x, np.float32(0.37), np.int16(-7)], constants=(1, 2)),
        "QuantizeLinear-per-axis": _standard_case("QuantizeLinear", [x, scales, np.array([0, 1, -1, 5], np.int8)], {"axis": 0}, (1, 2)),
        "DequantizeLinear-int32": _standard_case("DequantizeLinear", [a32, np.float32(3.3e-5)], constants=(1,)),
        "DequantizeLinear-int8-per-axis": _standard_case("DequantizeLinear", [a32.astype(np.int8), np.linspace(0.1, 2, 6).astype(np.float32), np.arange(-3, 3).astype(np.int8)], {"axis": -1}, (1, 2)),
        "Cast-int64-int8": _standard_case("Cast", [wide], {"to": TensorProto.INT8}),
        "Cast-int64-int32": _standard_case("Cast", [wide], {"to": TensorProto.INT32}),
        "Cast-int32-uint8": _standard_case("Cast", [wide.astype(np.int32)], {"to": TensorProto.UINT8}),
        "Cast-int32-int64": _standard_case("Cast", [a32], {"to": TensorProto.INT64}),
        "Cast-int32-float": _standard_case("Cast", [a32], {"to": TensorProto.FLOAT}),
        "Clip-int32": _standard_case("Clip", [a32, np.int32(-100), np.int32(100)], constants=(1, 2)),
        "Clip-int64-min-only": _standard_case("Clip", [a32.astype(np.int64), np.int64(-5)], constants=(1,)),
        "Clip-int8-max-only": _standard_case("Clip", [a32.astype(np.int8), None, np.int8(9)], constants=(2,)),
        "Where-int32": _standard_case("Where", [rng.random((4, 1)) < 0.5, a32, b32]),
        "Gather-int8-negative-indices": _standard_case("Gather", [table, np.array([[0, 9, -1, -10]], np.int64)], constants=(0,)),
        "Gather-int32-axis1": _standard_case("Gather", [table.astype(np.int32), np.array([0, -1, 2], np.int64)], {"axis": 1}),
        "Add-int32-wraps": _standard_case("Add", [a32, b32]),
        "Sub-int32-wraps": _standard_case("Sub", [a32, b32]),
        "Mul-int32-wraps": _standard_case("Mul", [a32, b32]),
        "Mul-int64-wraps": _standard_case("Mul", [a32.astype(np.int64) << 32, b32.astype(np.int64)]),
        "Add-int64-broadcast-const": _standard_case("Add", [a32.astype(np.int64), np.arange(6, dtype=np.int64) << 40], constants=(1,)),
    }


STANDARD_CASES = _standard_cases()


@pytest.mark.parametrize("name", list(STANDARD_CASES))
def test_standard_integer_ops_match_onnx_runtime(name):
    op, inputs, attrs, constants = STANDARD_CASES[name]
    names, graph_inputs, initializers = [], [], []
    for i, value in enumerate(inputs):
        if value is None:
            names.append("")
            continue
        array = np.asarray(value)
        names.append(f"in{i}")
        if i in constants:
            initializers.append(onnx.numpy_helper.from_array(array, f"in{i}"))
        else:
            graph_inputs.append(helper.make_tensor_value_info(f"in{i}", helper.np_dtype_to_tensor_dtype(array.dtype), array.shape))
    graph = helper.make_graph([helper.make_node(op, names, ["out"], **attrs)], "one", graph_inputs,
                              [helper.make_tensor_value_info("out", TensorProto.UNDEFINED, None)], initializer=initializers)
    proto = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)]))
    feeds = {f"in{i}": np.asarray(v) for i, v in enumerate(inputs) if v is not None and i not in constants}
    expected = testing.run_ort(proto, feeds)[0]
    model = ir.serde.deserialize_model(proto)
    mod = importer.to_relax(model, {k: list(v.shape) for k, v in feeds.items()})
    vm = relax.VirtualMachine(tvm.compile(mod, target=tvm.target.Target(LLVM)), tvm.cpu())
    got = vm["main"](*[tvm.runtime.tensor(feeds[v.name]) for v in model.graph.inputs]).numpy()
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)


# --- the whole integer-only MiniLM ------------------------------------------------------------------


@pytest.mark.slow
def test_ivit_minilm_is_bit_exact_with_onnx_runtime():
    import graphopt  # noqa: PLC0415
    from graphopt.models import minilm  # noqa: PLC0415

    batch = minilm.tokenize(minilm.sentences()[:3], seq_len=128)
    samples = [{k: v[i:i + 1] for k, v in batch.items()} for i in range(3)]
    model = graphopt.compile(minilm.build(), "ivit", calib=samples[:2], validate=False, bench_runs=0).model
    held_out = samples[2]
    shapes = {k: list(v.shape) for k, v in held_out.items()}
    prepared, _ = importer.prepare(model, shapes)
    vm = relax.VirtualMachine(tvm.compile(importer.to_relax(prepared, shapes), target=tvm.target.Target(LLVM)), tvm.cpu())
    got = vm["main"](*[tvm.runtime.tensor(held_out[v.name]) for v in prepared.graph.inputs])
    got = (got if hasattr(got, "numpy") else got[0]).numpy()
    np.testing.assert_array_equal(got, testing.run_ort(model, held_out)[0])


@pytest.mark.slow
@pytest.mark.parametrize("graph", ["prefill", "decode"])
def test_ivit_tiny_llama_logits_are_bit_exact_with_onnx_runtime(graph):
    """IntLayerNorm(center=0), ShiftGelu at slope 1, masked Shiftmax, the int32 products and the KV-cache
    entry: the integer-only decoder's logits match ONNX Runtime bit for bit on tvm-llvm. (decode's
    ``present_*`` outputs are float: Concat(past, dequantized new keys) after the region's exits.)"""
    import graphopt  # noqa: PLC0415
    from graphopt.backends import tvm as tvm_backend  # noqa: PLC0415
    from graphopt.models import tiny_llama  # noqa: PLC0415

    calib = [tiny_llama.example_inputs(seed=s, graph=graph) for s in range(4)]
    model = graphopt.compile(tiny_llama.build(graph=graph), "ivit", calib=calib, validate=False, bench_runs=0).model
    feeds = tiny_llama.example_inputs(seed=100, graph=graph)
    artifact = tvm_backend.compile(model, target="tvm-llvm", example_inputs=feeds)
    got = artifact.run(feeds)
    got = list(got.values()) if isinstance(got, dict) else list(got)
    expected = testing.run_ort(model, feeds)
    np.testing.assert_array_equal(got[0], expected[0])
    for present, reference in zip(got[1:], expected[1:]):
        np.testing.assert_allclose(present, reference, rtol=1e-6, atol=1e-7)
