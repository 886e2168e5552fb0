"""One template for graphopt's CPU dot-product tensor intrinsics (AVX2, AVX-512 VNNI / AVX-VNNI, sdot).

Each of them computes ``C[0:lanes] += A[0:kw] · B[0:lanes, 0:kw]``: ``kw`` values of one A row,
broadcast to every lane, times a ``lanes`` (columns) × ``kw`` (k) block of B, each int32 lane of C
getting the sum of its ``kw`` products. ``C`` is in ``local`` scope so the intrinsics match
``cache_write(..., "local")`` (the accumulators stay in registers); TVM's own x86 and Arm
intrinsics have a global-scope C, which does not.

``dot_intrin_func(lanes, kw, a_dtype, b_dtype)`` is that computation as a loop nest (the
description a block is matched against); given ``body``, a ``T.macro`` of ``(A, B, C)`` that does it
with the target's instructions, the same buffers with that body (the implementation).
``register`` registers the pair under a name.
"""

from __future__ import annotations

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

__all__ = ["dot_intrin_func", "register"]


def dot_intrin_func(lanes: int, kw: int, a_dtype: str, b_dtype: str, body=None):
    """The description of ``C[0:lanes] += A[0:kw] · B[0:lanes, 0:kw]`` (int32), or with ``body`` its implementation."""
    describe = body is None  # a Python bool: TVMScript keeps one branch, at parse time

    @T.prim_func(s_tir=True)
    def func(
        A: T.Buffer((kw,), a_dtype, offset_factor=1),
        B: T.Buffer((lanes, kw), b_dtype, offset_factor=1),
        C: T.Buffer((lanes,), "int32", offset_factor=1, scope="local"),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:kw], B[0:lanes, 0:kw])
            T.writes(C[0:lanes])
            if describe:
                for i in T.serial(0, lanes):
                    for k in T.serial(0, kw):
                        with T.sblock("update"):
                            vi, vk = T.axis.remap("SR", [i, k])
                            C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")
            else:
                body(A, B, C)

    return func


def register(name: str, lanes: int, kw: int, a_dtype: str, b_dtype: str, body) -> None:
    """Register the description and the implementation by ``body`` as ``name`` (idempotent)."""
    description = dot_intrin_func(lanes, kw, a_dtype, b_dtype)
    implementation = dot_intrin_func(lanes, kw, a_dtype, b_dtype, body)
    TensorIntrin.register(name, description, implementation, override=True)
