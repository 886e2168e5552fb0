"""Every graphopt op's torch implementation (graphopt/fx/graphopt_ops.py) against its numpy
reference on the op's own examples: integer ops bit-exact, float ops to float rounding."""

from __future__ import annotations

import numpy as np
import pytest

from graphopt import ops

torch = pytest.importorskip("torch")

ALL_OPS = ops.list_ops()


def _as_torch(value):
    return torch.from_numpy(np.array(value, copy=True))


@pytest.mark.parametrize("op", ALL_OPS, ids=[op.name for op in ALL_OPS])
def test_torch_implementation_matches_the_reference(op):
    implementation = ops.implementations("torch")[op.name]
    for inputs, attrs in op.examples():
        expected_all = op.reference(*inputs, **attrs)
        with torch.no_grad():
            got_all = implementation(*(_as_torch(a) for a in inputs), **attrs)
        multi = isinstance(expected_all, tuple)  # an op with several outputs returns a tuple
        for got, expected in zip(got_all if multi else (got_all,), expected_all if multi else (expected_all,)):
            got, expected = got.numpy(), np.asarray(expected)
            assert got.dtype == expected.dtype and got.shape == expected.shape
            if expected.dtype.kind in "iub":
                np.testing.assert_array_equal(got, expected)  # integer ops: bit-exact
            else:
                tol = 2e-3 if expected.dtype == np.float16 else 1e-5
                np.testing.assert_allclose(got, expected, rtol=tol, atol=tol)
