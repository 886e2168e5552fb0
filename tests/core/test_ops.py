"""Every graphopt op: its numpy reference and its ONNX function body (run by ONNX Runtime) agree.

The op mechanism itself: one declaration carries schema, reference and body; models that use an
op carry its function, import the domain, and pass the full ONNX checker.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from graphopt import ops, testing

ALL_OPS = ops.list_ops()


def _one_node_model(op: ops.OpDef, inputs: tuple, attrs: dict) -> ir.Model:
    values = [ir.val(f"in{i}", ir.DataType.from_numpy(np.asarray(a).dtype), ir.Shape(np.shape(a))) for i, a in enumerate(inputs)]
    plain = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in attrs.items()}
    node = ir.node(op.name, values, attributes=plain, domain=ops.DOMAIN, num_outputs=len(op.outputs))
    expected = op.reference(*inputs, **attrs)
    for i, (out, array) in enumerate(zip(node.outputs, expected if isinstance(expected, tuple) else (expected,))):
        out.name = f"out{i}"
        out.dtype = ir.DataType.from_numpy(np.asarray(array).dtype)
        out.shape = ir.Shape(np.shape(array))
    graph = ir.Graph(values, node.outputs, nodes=[node], opset_imports={"": 23}, name="one_op")
    model = ir.Model(graph, ir_version=10)
    assert ops.attach_functions(model) == [op.name]
    return model


def test_every_op_is_declared_with_examples():
    assert ALL_OPS, "no graphopt op declared"
    for op in ALL_OPS:
        assert op.examples is not None, f"{op.name} declares no examples to test it with"
        assert op.doc and op.inputs and op.outputs


@pytest.mark.parametrize("op", ALL_OPS, ids=[op.name for op in ALL_OPS])
def test_reference_matches_onnx_body(op):
    for inputs, attrs in op.examples():
        model = _one_node_model(op, inputs, attrs)
        testing.assert_valid(model)
        got = testing.run_ort(model, {f"in{i}": np.asarray(a) for i, a in enumerate(inputs)})
        expected = op.reference(*inputs, **attrs)
        expected = expected if isinstance(expected, tuple) else (expected,)
        for g, e in zip(got, expected):
            e = np.asarray(e)
            if e.dtype.kind in "iub":
                np.testing.assert_array_equal(g, e)  # integer ops are bit-exact
            else:
                tol = 2e-3 if e.dtype == np.float16 else 1e-5
                np.testing.assert_allclose(g, e, rtol=tol, atol=tol)


def test_functions_follow_the_model_opset_and_are_removed_when_unused():
    op = ALL_OPS[0]
    inputs, attrs = op.examples()[0]
    model = _one_node_model(op, inputs, attrs)
    function = next(iter(model.functions.values()))
    assert function.opset_imports[""] == model.opset_imports[""] == 23
    assert model.opset_imports[ops.DOMAIN] == ops.OPSET_VERSION
    model.graph.remove(model.graph.node(0), safe=False)
    model.graph.outputs.clear()
    assert ops.attach_functions(model) == []
    assert not model.functions and ops.DOMAIN not in model.opset_imports


def test_op_names_are_not_onnx_names():
    standard = {s.name for s in onnx.defs.get_all_schemas_with_history()}
    assert not {op.name for op in ALL_OPS} & standard
    with pytest.raises(ValueError, match="reuses an ONNX op name"):
        ops.declare_op(ops.OpDef("Gelu", "x", reference=lambda x: x, body=""))


# backend -> (the library its implementations need, the parts each op must register)
_BACKEND_PARTS = {"tvm": ("tvm", ("convert", "te")), "torch": ("torch", ("convert",))}


@pytest.mark.parametrize("backend", sorted(ops.BACKENDS))
def test_every_op_has_an_implementation_in_every_backend(backend):
    """The registry's completeness check: a declared op without a kernel fails here, not in a user's build."""
    library, parts = _BACKEND_PARTS[backend]
    pytest.importorskip(library)
    names = {op.name for op in ALL_OPS}
    for part in parts:
        assert set(ops.implementations(backend, part=part)) == names, part


def test_the_core_declares_ops_without_importing_passes_or_backends():
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    code = ("import sys; from graphopt import ops; names = [op.name for op in ops.list_ops()]; "
            "print(len(names), sorted(m for m in sys.modules if m.startswith(('graphopt.passes', 'graphopt.backends'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split(" ", 1)
    assert int(out[0]) == len(ALL_OPS) and out[1].strip() == "[]"
