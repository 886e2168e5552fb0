"""``graphopt.to_torch(model, train=True)``: the same forward as eval mode, bit for bit, with
gradients through the integer ops (straight-through estimators), integer latents and learnable
scales as parameters, ``trainable`` freezing and LoRA adapters (docs/torch.md, "Train mode")."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import pytest

import graphopt
from bench import to_torch as measure
from graphopt import ops
from graphopt.errors import UsageError
from graphopt.fx import train_ops
from graphopt.fx.lora import merge_lora
from graphopt.pipeline import run_pipeline

torch = pytest.importorskip("torch")


def _ivit(name: str):
    from graphopt.models import digits_vit, minilm, tiny_bert  # noqa: PLC0415

    build, inputs = {
        "digits-vit": (digits_vit.build, digits_vit.example_inputs),
        "tiny-bert": (tiny_bert.build, tiny_bert.example_inputs),
        "minilm": (minilm.build, lambda seed: minilm.example_inputs(seed=seed, seq_len=16)),
    }[name]
    model = graphopt.load(build())
    run_pipeline(model, "ivit", samples=[inputs(seed=s) for s in range(4)])
    return model, inputs(seed=101)


@pytest.mark.parametrize("name", ["digits-vit", "tiny-bert", pytest.param("minilm", marks=pytest.mark.slow)])
def test_train_forward_equals_eval_on_every_integer_tensor(name):
    torch.set_num_threads(1)
    model, feeds = _ivit(name)
    exposed = measure.expose_integer_tensors(model)  # every int8..int32 node output made a graph output
    assert exposed > 20
    with torch.no_grad():
        expected = graphopt.to_torch(model)(**feeds)
        got = graphopt.to_torch(model, train=True)(**feeds)
    assert len(got) == len(expected)
    for e, g in zip(expected, got):
        if e.is_floating_point():
            assert g.dtype == e.dtype and torch.equal(g, e)  # the dequantized outputs, bit for bit
        else:  # carried as float64 in train mode: the same integers
            assert g.dtype == torch.float64 and torch.equal(g, e.to(torch.float64))


def test_gradients_reach_integer_latents_and_scales():
    model, feeds = _ivit("digits-vit")
    module = graphopt.to_torch(model, train=True)
    names, dtypes, roles = module.parameter_names, module.meta["onnx"]["parameter_dtypes"], module.meta["onnx"]["parameter_roles"]
    assert set(names) == set(dtypes) == set(roles)
    assert {"INT8", "UINT8", "INT32", "FLOAT"} <= set(dtypes.values())
    (logits,) = module(**feeds)
    logits.square().mean().backward()
    grads = {onnx: module.get_parameter(attr).grad for onnx, attr in names.items()}
    assert all(g is not None for g in grads.values())
    moved = {onnx for onnx, g in grads.items() if bool(g.abs().sum() > 0)}
    for onnx_name, role in roles.items():  # weights, quantization scales, LayerNorm affine: all learn
        if role.split(":")[0] in ("MatMulInteger", "ConvInteger", "QuantizeLinear", "DequantizeLinear", "IntLayerNorm"):
            assert onnx_name in moved, (onnx_name, role)
    multipliers = [n for n, r in roles.items() if r == "DyadicRequant:1"]
    # measured 37 of 39: two requantize the patch embedding straight into the last residual adds,
    # whose patch-token rows the CLS readout never reads (a true zero)
    assert len(set(multipliers) & moved) >= len(multipliers) - 2


@pytest.mark.parametrize("name", sorted(set(train_ops.TRAIN_FORMS) - {"ActivationThreshold"}))
def test_integer_op_train_forms_are_exact_and_pass_gradients(name):
    """On the op's own examples, carried as float64: the reference's integers, finite gradients."""
    (op,) = [op for op in ops.list_ops() if op.name == name]
    weights, moved = torch.Generator().manual_seed(0), []
    for inputs, attrs in op.examples():
        expected = np.asarray(op.reference(*inputs, **attrs))
        carried = [torch.tensor(np.asarray(a, np.float64), requires_grad=True) for a in inputs]
        got = train_ops.TRAIN_FORMS[name](*carried, **attrs)
        assert got.dtype == torch.float64 and np.array_equal(got.detach().numpy(), expected)
        (got * torch.rand(got.shape, generator=weights, dtype=torch.float64)).sum().backward()
        assert bool(torch.isfinite(carried[0].grad).all())
        moved.append(bool(carried[0].grad.abs().sum() > 0))
    # zero only where the float function is flat too: one-key softmax rows, saturated requants
    assert sum(moved) >= len(moved) / 2, moved


def _three_nodes(text: str) -> onnx.ModelProto:
    return onnx.parser.parse_model(f'<ir_version: 9, opset_import: ["" : 19]>\n{text}')


def test_a_threshold_learns_through_its_soft_mask():
    proto = onnx.parser.parse_model("""<ir_version: 9, opset_import: ["" : 19, "pkg.graphopt" : 1]>
g (float[6] x) => (float[6] y) <float t = {1.0}> { y = pkg.graphopt.ActivationThreshold (x, t) }""")
    module = graphopt.to_torch(proto, train=True)
    x = torch.tensor([0.2, 0.95, 1.05, 3.0, -1.02, -0.5])
    (y,) = module(x=x)
    assert torch.equal(y.detach(), torch.where(x.abs() > 1.0, x, 0.0))  # the hard threshold, exactly
    y.sum().backward()
    # d/dt of x·sigmoid((|x| - t)/tau): 0.95 and 1.05 pull the sum down as t rises, -1.02 up: net down
    assert float(module.get_parameter("t").grad) < 0


def test_round_and_cast_pass_the_gradient_straight_through():
    proto = _three_nodes("""g (float[6] x) => (float[6] y) {
        r = Round (x)
        i = Cast <to: int = 3> (r)
        y = Cast <to: int = 1> (i)
    }""")
    x = torch.tensor([-2.5, -0.4, 0.5, 1.5, 3.7, 100.2], requires_grad=True)
    (expected,) = graphopt.to_torch(proto)(x=x.detach())
    (y,) = graphopt.to_torch(proto, train=True)(x=x)
    assert torch.equal(y.detach(), expected)  # round half to even, int8 wrap: -2, -0, 0, 2, 4, 100
    (y * torch.arange(6.0)).sum().backward()
    assert torch.equal(x.grad, torch.arange(6.0))  # identity through Round and both Casts


def test_quantize_linear_learns_its_scale_as_lsq():
    proto = _three_nodes("""g (float[5] x) => (float[5] y) <float s = {0.5}, int8 zp = {0}> {
        q = QuantizeLinear (x, s, zp)
        y = DequantizeLinear (q, s, zp)
    }""")
    module = graphopt.to_torch(proto, train=True)
    assert module.meta["onnx"]["parameter_dtypes"] == {"s": "FLOAT"}  # the zero point stays fixed
    x = torch.tensor([0.3, -1.26, 2.0, 80.0, -70.0], requires_grad=True)
    (y,) = module(x=x)
    assert torch.equal(y.detach(), torch.tensor([0.5, -1.5, 2.0, 63.5, -64.0]))
    y.sum().backward()
    assert torch.equal(x.grad, torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0]))  # zero where the clamp cut
    q = torch.tensor([1.0, -3.0, 4.0, 127.0, -128.0])
    inside = torch.tensor([True, True, True, False, False])
    lsq = torch.where(inside, q - x.detach() / 0.5, q)  # d(s·q)/ds: round(x/s) - x/s, the bound outside
    torch.testing.assert_close(module.get_parameter("s").grad, lsq.sum())


def test_trainable_freezes_every_other_parameter():
    model, _ = _ivit("digits-vit")
    module = graphopt.to_torch(model, train=True, trainable=["*conv2d*"])
    learning = {onnx for onnx, attr in module.parameter_names.items() if module.get_parameter(attr).requires_grad}
    assert learning and all("conv2d" in name for name in learning)
    assert len(learning) < len(module.parameter_names)


def test_lora_on_an_integer_graph_starts_as_the_graph():
    model, feeds = _ivit("digits-vit")
    with torch.no_grad():
        (expected,) = graphopt.to_torch(model)(**feeds)
    module = graphopt.to_torch(model, train=True, lora={"rank": 4, "layers": ["*"], "alpha": 8})
    adapted = module.meta["onnx"]["lora"]
    assert len(adapted) == 9  # the int8 weights of the 9 linear layers (P·V and Q·Kᵀ have none)
    (logits,) = module(**feeds)
    assert torch.equal(logits.detach(), expected)  # B = 0
    logits.square().mean().backward()
    for name, entry in adapted.items():
        assert module.get_parameter(entry["B"]).grad.abs().sum() > 0
        assert not module.get_parameter(module.parameter_names[name]).requires_grad  # the base is frozen
    assert {name: w.shape for name, w in merge_lora(module).items()} == {
        name: tuple(model.graph.initializers[name].shape) for name in adapted}


def test_lora_changes_the_output_after_one_step_and_merges(mlp_proto):
    module = graphopt.to_torch(mlp_proto, train=True, lora={"rank": 2, "layers": ["w"], "alpha": 2})
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    (before,) = module(x=x)
    optimizer = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=0.1)
    before.square().mean().backward()
    optimizer.step()
    with torch.no_grad():
        (after,) = module(x=x)
    assert not torch.allclose(after, before)
    merged = merge_lora(module)["w"]  # written into the graph, the plain module computes the same
    for init in mlp_proto.graph.initializer:
        if init.name == "w":
            init.CopyFrom(onnx.numpy_helper.from_array(merged.astype(np.float32), "w"))
        if init.name == "b":
            init.CopyFrom(onnx.numpy_helper.from_array(module.get_parameter("b").detach().numpy(), "b"))
    with torch.no_grad():
        (plain,) = graphopt.to_torch(mlp_proto)(x=x)
    torch.testing.assert_close(plain, after)


def test_lora_needs_train_mode(mlp_proto):
    with pytest.raises(UsageError, match="train=True"):
        graphopt.to_torch(mlp_proto, lora={"rank": 2})


def test_an_int32_accumulator_wraps_exactly_with_gradient_one():
    from graphopt.fx.straight_through import wrap_to_range  # noqa: PLC0415

    x = torch.tensor([2.0**31 + 5, -(2.0**31) - 1, 7.0], dtype=torch.float64, requires_grad=True)
    y = wrap_to_range(x, 32, signed=True)
    assert y.tolist() == [-(2**31) + 5, 2**31 - 1, 7]  # what int64 -> int32 gives in eval mode
    y.sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 1.0]


def _shifted_vit():
    from graphopt.models import digits_vit  # noqa: PLC0415

    model = graphopt.load(digits_vit.build())
    run_pipeline(model, "shift-linear", samples=[digits_vit.example_inputs(seed=s) for s in range(2)])
    return model, digits_vit.example_inputs(seed=101)


def test_shift_codes_train_as_latent_weights_and_pack_back():
    """ShiftMatMul's packed codes become float latents (the decoded ±2^-e): the forward equals eval,
    gradients reach them, and the write-back form of an unmoved latent is the very words it came from."""
    from graphopt.fx.train_parameters import as_initializer  # noqa: PLC0415

    model, feeds = _shifted_vit()
    module = graphopt.to_torch(model, train=True)
    encodings = module.meta["onnx"]["parameter_encodings"]
    assert len(encodings) == sum(n.op_type == "ShiftMatMul" for n in model.graph) > 0
    with torch.no_grad():
        assert torch.equal(module(**feeds)[0], graphopt.to_torch(model)(**feeds)[0])
    module(**feeds)[0].square().mean().backward()
    initializers = model.graph.initializers
    for name in encodings:
        latent = module.get_parameter(module.parameter_names[name])
        assert latent.grad is not None and bool(latent.grad.abs().sum() > 0), name
        packed = as_initializer(module, name, latent.detach().numpy())
        np.testing.assert_array_equal(packed, initializers[name].const_value.numpy())


def test_a_moved_shift_latent_rounds_to_the_nearest_power_of_two():
    w = torch.tensor([[0.3, -0.7, 0.004, 1e-9, 3.0]], requires_grad=True)
    rounded = train_ops.shift_round(w, bits=5, zero_free=0)
    assert rounded.tolist() == [[0.25, -0.5, 2.0**-8, 0.0, 1.0]]  # 2^-8: 0.004 is 2^-7.97; 1e-9: the zero code
    rounded.sum().backward()
    assert w.grad.tolist() == [[1.0] * 5]  # straight through
    from graphopt.ops.shift_matmul import decode, encode  # noqa: PLC0415

    np.testing.assert_array_equal(decode(encode(w.detach().numpy(), 5, 0), 5, 0), rounded.detach().numpy())
