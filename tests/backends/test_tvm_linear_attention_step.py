"""LinearAttentionStep through its TVM converter: the recurrent-step CPU kernel (a CPU target in scope,
float32, one token) and the TE computes (no target in scope, or a block of several rows),
each output against the op's numpy reference on the op's examples, to 1e-5."""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
from tvm import relax  # noqa: E402

from graphopt import ops  # noqa: E402
from graphopt.backends.tvm.kernels import CONVERTERS  # noqa: E402

LLVM = "llvm"


def _run_all(cases: list, *, target_in_scope: bool) -> tuple[list[list[np.ndarray]], list[bool]]:
    """Each case's outputs of ``convert(...)`` (one module, one compile for llvm), and whether the
    recurrent-step kernel took it."""
    bb = relax.BlockBuilder()
    target = tvm.target.Target(LLVM)
    fast = []
    for n, (inputs, attrs) in enumerate(cases):
        params = [relax.Var(f"in{i}", relax.TensorType(np.shape(a), str(np.asarray(a).dtype))) for i, a in enumerate(inputs)]
        with bb.function(f"case{n}", params):
            with bb.dataflow():
                before = len(bb.get().functions)
                if target_in_scope:
                    with target:
                        out = CONVERTERS["LinearAttentionStep"](bb, params, dict(attrs))
                else:
                    out = CONVERTERS["LinearAttentionStep"](bb, params, dict(attrs))
                added = [g.name_hint for g in bb.get().functions][before:]
                fast.append(any(name.startswith("graphopt_linear_attention_step") and "step_te" not in name
                                for name in added))
                out = bb.emit_output(out)
            bb.emit_func_output(out)
    vm = relax.VirtualMachine(tvm.compile(bb.get(), target=target), tvm.cpu())
    results = []
    for n, (inputs, _) in enumerate(cases):
        result = vm[f"case{n}"](*[tvm.runtime.tensor(np.asarray(a)) for a in inputs])
        results.append([result[i].numpy() for i in range(3)])
    return results, fast


@pytest.mark.parametrize("target_in_scope", [True, False], ids=["recurrent-kernel", "te"])
def test_examples_match_the_reference(target_in_scope):
    op = ops.get_op("LinearAttentionStep")
    cases = op.examples()
    results, fast = _run_all(cases, target_in_scope=target_in_scope)
    for (inputs, attrs), got in zip(cases, results):
        for g, e in zip(got, op.reference(*inputs, **attrs)):
            assert g.shape == e.shape and g.dtype == e.dtype
            np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)
    # the fast kernel takes the one-token cases (not the 3-row block), and only for a CPU target
    assert fast == ([True, True, True, False] if target_in_scope else [False] * 4)
