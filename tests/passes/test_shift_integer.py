"""shift-integer: ivit's int8 weight islands (MatMulInteger) as ShiftMatMulInteger, the fit folded into scale and bias.

Structure (golden op lists with and without a bias, the metadata and the note), "does not fire"
cases with their reasons, numerics (ONNX Runtime on the rewritten island equals the numpy reference
``(x @ D + b') · s·t`` bit for bit, and stays close to the int8 island; the chained form's DyadicRequant
gets ``M'·2^-K' ≈ M·2^-K·t``, bit for bit vs ``dyadic_reference``), validity (full checker), the
accumulator headroom (E shrinks with K), ``ivit,shift-integer`` integer-only, and the ``ivit-shift``
preset on a small block: integer-only, ShiftMatMulInteger where ivit had MatMulInteger, tvm-llvm equal
to ONNX Runtime bit for bit.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import onnx_ir as ir
import pytest

from graphopt import integer_region, ops, testing
from graphopt.ops.shift_matmul import SQNR_KEY, unpack
from graphopt.ops.shift_matmul_integer import OP_NAME, integer_weights, shift_matmul_integer_reference
from graphopt.passes.shift_integer import TOP_KEY, integer_shift_weights

K, N = 12, 8


def _ints(array) -> str:
    return "{" + ", ".join(str(int(v)) for v in np.ravel(array)) + "}"


def _floats(array) -> str:
    return "{" + ", ".join(repr(float(v)) for v in np.ravel(np.asarray(array, np.float32))) + "}"


RNG = np.random.default_rng(testing.SEED)
WQ = RNG.integers(-127, 128, (K, N)).astype(np.int8)
BIAS = RNG.integers(-3000, 3000, N).astype(np.int32)
SCALE = RNG.uniform(1e-4, 1e-3, N).astype(np.float32)


def _island(bias: bool = True, x_type: str = "int8", extra: str = "", reader: str = "") -> str:
    body = "acc = MatMulInteger (x, w)\n"
    body += "summed = Add (acc, b)\n y = DequantizeLinear <axis = -1> (summed, s, z)\n" if bias else \
        "y = DequantizeLinear <axis = -1> (acc, s, z)\n"
    outputs = "float[2, 3, 8] y" + (", int32[2, 3, 8] extra" if reader else "")
    inits = (f"int8[{K}, {N}] w = {_ints(WQ)}, int32[{N}] b = {_ints(BIAS)}, float[{N}] s = {_floats(SCALE)}, "
             f"int32[{N}] z = {_ints(np.zeros(N))}")
    return (f'<ir_version: 10, opset_import: ["" : 21]>\ng ({x_type}[2, 3, {K}] x{extra}) => ({outputs}) <{inits}> '
            f"{{\n{body}{reader}}}")


def _feeds(dtype=np.int8):
    return {"x": np.random.default_rng(testing.SEED + 1).integers(-128, 128, (2, 3, K)).astype(dtype)}


def _node(model: ir.Model) -> ir.Node:
    return next(n for n in model.graph if n.op_type == OP_NAME and n.domain == ops.DOMAIN)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_island_becomes_shifts_and_equals_its_reference_bit_for_bit(check, bias):
    result = check.run(_island(bias), "shift-integer")
    assert result.last.rewrites == {"shift-integer": 1}, result.last.declines
    assert result.ops == ([OP_NAME, "Add", "DequantizeLinear"] if bias else [OP_NAME, "DequantizeLinear"])
    testing.assert_valid(result.model)
    node = _node(result.model)
    assert float(node.metadata_props[SQNR_KEY]) > 10 and node.metadata_props[TOP_KEY] == "14"
    assert any("1 int8 weight matmuls as shifts" in note for note in result.last.notes)
    # numpy reference from the pass's own fit: (x @ D + round(b / t)) · s·t
    shifts, _ = integer_shift_weights(WQ, BIAS if bias else None)
    feeds = _feeds()
    acc = shift_matmul_integer_reference(feeds["x"], onh.to_array(ir.to_proto(node.inputs[1].const_value)))
    np.testing.assert_array_equal(unpack(node.inputs[1].const_value.numpy(), K), shifts.codes)
    if bias:
        acc = acc + np.rint(BIAS / shifts.scale).astype(np.int32)
    expected = acc.astype(np.float32) * (SCALE.astype(np.float64) * shifts.scale).astype(np.float32)
    got = testing.run_ort(result.model, feeds)[0]
    np.testing.assert_array_equal(got, expected)
    # and close to the int8 island it replaces (power-of-two weights: ~15 dB per layer)
    original = testing.run_ort(result.original, feeds)[0]
    assert np.abs(got - original).max() < 0.35 * np.abs(original).max()


M = RNG.integers(2**20, 2**21, N).astype(np.int32)
SHIFT = np.full(N, 30, np.int32)


def _chained(bias: bool = True) -> str:
    """ivit's chained form: the accumulator straight into DyadicRequant (per-column M, K)."""
    body = "acc = MatMulInteger (x, w)\n"
    body += "summed = Add (acc, b)\n y = pkg.graphopt.DyadicRequant <out_bits = 16> (summed, m, k)\n" if bias else \
        "y = pkg.graphopt.DyadicRequant <out_bits = 16> (acc, m, k)\n"
    inits = (f"int8[{K}, {N}] w = {_ints(WQ)}, int32[{N}] b = {_ints(BIAS)}, int32[{N}] m = {_ints(M)}, "
             f"int32[{N}] k = {_ints(SHIFT)}")
    return (f'<ir_version: 10, opset_import: ["" : 21, "pkg.graphopt" : 1]>\ng (int8[2, 3, {K}] x) => (int32[2, 3, 8] y) '
            f"<{inits}> {{\n{body}}}")


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_chained_island_takes_the_ratio_into_its_requant_bit_for_bit(check, bias):
    from graphopt.ops.dyadic_requant import dyadic_multiplier, dyadic_reference  # noqa: PLC0415

    source = check.proto(_chained(bias))
    ir_model = ir.serde.deserialize_model(source)
    ops.attach_functions(ir_model)
    result = check.run(ir.to_proto(ir_model), "shift-integer")
    assert result.last.rewrites == {"shift-integer": 1}, result.last.declines
    assert result.ops == ([OP_NAME, "Add", "DyadicRequant"] if bias else [OP_NAME, "DyadicRequant"])
    ops.attach_functions(result.model)
    testing.assert_valid(result.model)
    shifts, _ = integer_shift_weights(WQ, BIAS if bias else None)
    feeds = _feeds()
    acc = shift_matmul_integer_reference(feeds["x"], _node(result.model).inputs[1].const_value.numpy())
    if bias:
        acc = acc + np.rint(BIAS / shifts.scale).astype(np.int32)
    m, k = dyadic_multiplier(M.astype(np.float64) * np.exp2(-SHIFT.astype(np.float64)) * shifts.scale)
    np.testing.assert_array_equal(testing.run_ort(result.model, feeds)[0], dyadic_reference(acc, m, k, out_bits=16))


def test_weights_fit_and_headroom():
    shifts, _ = integer_shift_weights(WQ, BIAS)
    d = integer_weights(shifts.codes).astype(np.float64)
    assert np.abs(d).max() == 2**14  # the top exponent at K = 12
    assert shifts.sqnr_db > 14
    wide = np.random.default_rng(2).integers(-127, 128, (4096, 4)).astype(np.int8)
    shifts, _ = integer_shift_weights(wide, None)
    assert shifts.top == 11  # 4096 · 128 · 2^11 = 2^30: the accumulator keeps its headroom
    assert 4096 * 128 * np.abs(integer_weights(shifts.codes)).max() < 2**31
    zero_free, _ = integer_shift_weights(WQ, None, zero_free=True)
    assert zero_free.top == 15 and not (integer_weights(zero_free.codes, zero_free=1) == 0).any()


@pytest.mark.parametrize(("source", "reason"), [
    (_island(x_type="uint8"), "not int8"),
    (_island(bias=False).replace("acc = MatMulInteger (x, w)", "acc = MatMulInteger (x, wr)").replace(
        "int8[2, 3, 12] x", "int8[2, 3, 12] x, int8[12, 8] wr"), "not a constant int8"),
], ids=["uint8-input", "runtime-weight"])
def test_declines(check, source, reason):
    check.declines(source, "shift-integer", reason)


def test_accumulator_read_outside_the_island_is_left_alone(check):
    """The rewriter keeps a match whose accumulator has another reader (its new value would differ)."""
    result = check.run(_island(reader="extra = Identity (acc)\n"), "shift-integer")
    assert not result.last.modified and result.ops == testing.op_types(result.original)


def _block() -> onnx.ModelProto:
    """LayerNorm -> Linear(16, 32) + bias -> GELU -> Linear(32, 8) -> LayerNorm: two weight islands under ivit."""
    rng = np.random.default_rng(testing.SEED + 3)
    inits = {"w1": rng.standard_normal((16, 32)) * 0.2, "b1": rng.standard_normal(32) * 0.1,
             "w2": rng.standard_normal((32, 8)) * 0.2, "g0": np.ones(16), "z0": np.zeros(16), "g": np.ones(8), "z": np.zeros(8)}
    nodes = [oh.make_node("LayerNormalization", ["x", "g0", "z0"], ["n0"], axis=-1), oh.make_node("MatMul", ["n0", "w1"], ["m1"]),
             oh.make_node("Add", ["m1", "b1"], ["a1"]), oh.make_node("Gelu", ["a1"], ["r"]),
             oh.make_node("MatMul", ["r", "w2"], ["m2"]), oh.make_node("LayerNormalization", ["m2", "g", "z"], ["y"], axis=-1)]
    graph = oh.make_graph(nodes, "block", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 16])],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4, 8])],
                          [onh.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 21)])


def test_shift_integer_after_ivit_composes():
    """``ivit,shift-integer``: the chained islands (MatMulInteger -> DyadicRequant) are taken, still integer-only."""
    import graphopt  # noqa: PLC0415

    rng = np.random.default_rng(testing.SEED + 4)
    calib = [{"x": rng.standard_normal((1, 4, 16)).astype(np.float32)} for _ in range(4)]
    model = graphopt.compile(_block(), passes="ivit,shift-integer", calib=calib, validate=False, bench_runs=0).model
    kinds = testing.op_types(model)
    assert kinds.count(OP_NAME) == 2 and "MatMulInteger" not in kinds
    assert integer_region.verify(model).ok
    testing.assert_valid(model)


def test_ivit_shift_preset_is_integer_only_and_tvm_equals_onnx_runtime():
    import graphopt  # noqa: PLC0415

    rng = np.random.default_rng(testing.SEED + 4)
    calib = [{"x": rng.standard_normal((1, 4, 16)).astype(np.float32)} for _ in range(4)]
    result = graphopt.compile(_block(), passes="ivit-shift", calib=calib, validate=False, bench_runs=0)
    model = result.model
    kinds = testing.op_types(model)
    assert kinds.count(OP_NAME) == 2 and "MatMulInteger" not in kinds
    assert integer_region.verify(model).ok
    testing.assert_valid(model)
    feeds = {"x": rng.standard_normal((1, 4, 16)).astype(np.float32)}
    expected = testing.run_ort(model, feeds)[0]
    assert np.isfinite(expected).all()
    pytest.importorskip("tvm")
    from graphopt.backends import tvm as tvm_backend  # noqa: PLC0415

    artifact = tvm_backend.compile(model, target="tvm-llvm", example_inputs=feeds)
    np.testing.assert_array_equal(artifact.run(feeds)["y"], expected)
