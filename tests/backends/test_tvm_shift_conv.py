"""``ShiftConv`` on TVM: the converter (constant codes decoded at compile time into Relax's conv; codes
fed at run time decoded per call) and the TE kernel equal the numpy reference on the op's examples.
"""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
from tvm import relax, te  # noqa: E402

from graphopt import ops  # noqa: E402
from graphopt.backends.tvm.kernels import CONVERTERS, TE_KERNELS  # noqa: E402
from graphopt.ops.shift_conv import OP_NAME  # noqa: E402

LLVM = tvm.target.Target({"kind": "llvm"})


def _run_converter(inputs: tuple, attrs: dict, constant_inputs: tuple[int, ...]) -> np.ndarray:
    bb = relax.BlockBuilder()
    params, args = [], []
    for i, array in enumerate(inputs):
        if i in constant_inputs:
            args.append(relax.const(array))
        else:
            var = relax.Var(f"in{i}", relax.TensorType(array.shape, str(array.dtype)))
            params.append((var, array))
            args.append(var)
    with bb.function("main", [p for p, _ in params]):
        with bb.dataflow():
            out = bb.emit_output(CONVERTERS[OP_NAME](bb, args, {**attrs, "tvm_custom": {"name": "n0", "num_outputs": 1}}))
        bb.emit_func_output(out)
    with LLVM:
        executable = tvm.compile(bb.get(), target=LLVM)
    vm = relax.VirtualMachine(executable, tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(a) for _, a in params]).numpy()


@pytest.mark.parametrize("constant_inputs", [(1, 2, 3), ()], ids=["constant-codes", "runtime-codes"])
def test_converter_matches_the_reference(constant_inputs):
    op = ops.get_op(OP_NAME)
    for inputs, attrs in op.examples():
        np.testing.assert_allclose(_run_converter(inputs, attrs, constant_inputs), op.reference(*inputs, **attrs),
                                   rtol=1e-5, atol=1e-5)


def test_te_kernel_matches_the_reference():
    op = ops.get_op(OP_NAME)
    for inputs, attrs in op.examples()[:2]:
        placeholders = [te.placeholder(a.shape, str(a.dtype), name=f"in{i}") for i, a in enumerate(inputs)]
        out = TE_KERNELS[OP_NAME](*placeholders, **attrs)
        func = te.create_prim_func([*placeholders, out])
        compiled = tvm.compile(tvm.IRModule({"main": func}), target=LLVM)["main"]
        expected = op.reference(*inputs, **attrs)
        result = tvm.runtime.tensor(np.zeros(expected.shape, np.float32))
        compiled(*[tvm.runtime.tensor(a) for a in inputs], result)
        np.testing.assert_allclose(result.numpy(), expected, rtol=1e-5, atol=1e-5)
