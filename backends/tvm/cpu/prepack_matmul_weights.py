"""Pre-pack constant matmul weights into register-tile panels, once, at compile time.

A GEMM kernel streams B one ``K x nr`` panel at a time (``nr`` = the register tile's width, see
``matmul.tile_shape``). Stored as ``[K, N]`` (or ``[N, K]``) that panel is strided; the hand
schedule in ``shared/reference/tvm-cpu.md`` got its last 35% from copying it to contiguous memory.
When B is a constant (model weights bound into the module) the copy can be done here instead, for
good: the PrimFunc's B parameter is re-laid out as ``[N/nr, K, nr]`` with ``transform_layout`` and
every call site gets the matching numpy-packed constant. The matmul rule sees an already packed
B (index ``[n // nr, k, n % nr]``) and skips its own runtime panel copy.

Runs after FuseTIR and before scheduling. A PrimFunc is packed only when *every* call passes a
constant for B, B has no batch axes, and N divides by ``nr``.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, tirx
from tvm.ir.expr import Constant  # relax constants (GenericConst) derive from it
from tvm.target import Target

from .common import is_scheduled, one_reduction, static_extent
from .matmul import analyze_matmul, tile_shape


def _find_matmul(func: tirx.PrimFunc):
    """(schedule, MatmulBlock) for a single-matmul PrimFunc, else None (sorted on a fresh schedule)."""
    found = one_reduction(func)
    if found is None:
        return None
    sch, _, reduction = found
    mm = analyze_matmul(sch, reduction)
    return (sch, mm) if mm is not None else None


def _packing_plan(func: tirx.PrimFunc, target: Target):
    """(param position of B, B's 2-D orientation 'kn' or 'nk', nr) if B can be packed, else None."""
    found = _find_matmul(func)
    if found is None:
        return None
    sch, mm = found
    if mm.batch:
        return None
    params = list(func.params)
    position = next((i for i, p in enumerate(params) if p.same_as(mm.b_buffer)), None)
    if position is None:
        return None
    stmt = sch.get(mm.block)
    k_var = stmt.iter_vars[mm.k].var
    n_vars = [stmt.iter_vars[i].var for i in mm.n]
    if len(n_vars) != 1:
        return None
    indices = list(mm.b_indices)
    # B as [K, N] / [N, K] up to leading unit axes, indexed by plain iter vars
    shape = [static_extent_of(d) for d in mm.b_buffer.shape]
    if any(s is None for s in shape) or len(shape) < 2 or any(s != 1 for s in shape[:-2]):
        return None
    last_two = indices[-2:]
    if last_two[0].same_as(k_var) and last_two[1].same_as(n_vars[0]):
        orientation = "kn"
    elif last_two[0].same_as(n_vars[0]) and last_two[1].same_as(k_var):
        orientation = "nk"
    else:
        return None
    loops = sch.get_loops(mm.block)
    m_extent = 1
    for i in mm.m:
        extent = static_extent(sch, loops[i])
        m_extent = None if m_extent is None or extent is None else m_extent * extent
    n_extent = shape[-1] if orientation == "kn" else shape[-2]
    acc_dtype = str(stmt.body.buffer.dtype)
    _, nr = tile_shape(target, acc_dtype, m_extent, n_extent)
    if n_extent % nr or nr == n_extent:
        return None
    return position, orientation, nr, len(shape)


def static_extent_of(dim) -> int | None:
    return int(dim) if isinstance(dim, tirx.IntImm) else None


def _pack_func(func: tirx.PrimFunc, plan) -> tirx.PrimFunc:
    position, orientation, nr, ndim = plan
    sch, mm = _find_matmul(func)
    unit = ndim - 2

    def index_map(*idx):
        k, n = (idx[unit], idx[unit + 1]) if orientation == "kn" else (idx[unit + 1], idx[unit])
        return (n // nr, k, n % nr)

    sch.transform_layout(mm.block, ("read", mm.b_read), index_map)
    return sch.mod["main"]


def _pack_array(array: np.ndarray, plan) -> np.ndarray:
    _, orientation, nr, _ = plan
    matrix = array.reshape(array.shape[-2:])
    if orientation == "nk":
        matrix = matrix.T
    k, n = matrix.shape
    return np.ascontiguousarray(matrix.reshape(k, n // nr, nr).transpose(1, 0, 2))


@relax.expr_functor.mutator
class _CallSiteRewriter(relax.PyExprMutator):
    """Points calls of a packed PrimFunc at its packed copy and packs their weight constants."""

    def __init__(self, mod, plans, packed_funcs):
        super().__init__(mod)
        self.plans = plans  # old GlobalVar name -> plan
        # a new GlobalVar per packed function: the old one's type still has B's old shape
        self.new_gvars = {
            name: self.builder_.add_func(func, name + "_prepacked") for name, func in packed_funcs.items()
        }

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if call.op != tvm.ir.Op.get("relax.call_tir"):
            return call
        name = call.args[0].name_hint
        plan = self.plans.get(name)
        if plan is None:
            return call
        args = list(call.args[1].fields)
        position = plan[0]
        args[position] = relax.const(_pack_array(args[position].value.numpy(), plan))
        return relax.Call(call.op, [self.new_gvars[name], relax.Tuple(args), *call.args[2:]], call.attrs, call.ty_args)


def _call_sites(mod: tvm.IRModule) -> tuple[dict[str, list], dict[str, int]]:
    """(GlobalVar name -> argument tuples of its call_tir calls, GlobalVar name -> references in all)
    over the Relax functions. A PrimFunc referenced more often than it is call_tir-ed is used some
    other way and is left alone."""
    calls: dict[str, list] = {}
    references: dict[str, int] = {}
    call_tir = tvm.ir.Op.get("relax.call_tir")

    def visit(expr):
        if isinstance(expr, relax.Call) and expr.op == call_tir:
            calls.setdefault(expr.args[0].name_hint, []).append(expr.args[1])
        elif isinstance(expr, relax.GlobalVar):
            references[expr.name_hint] = references.get(expr.name_hint, 0) + 1

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return calls, references


@tvm.transform.module_pass(opt_level=0, name="PrepackMatmulWeights")
class PrepackMatmulWeights:
    """Re-lay constant matmul weights as ``[N/nr, K, nr]`` panels (see the module docstring)."""

    def __init__(self, target: Target):
        self.target = target

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        calls, references = _call_sites(mod)
        plans, packed = {}, {}
        for gvar, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc) or is_scheduled(func):
                continue
            arg_tuples = calls.get(gvar.name_hint, [])
            if not arg_tuples or references.get(gvar.name_hint, 0) != len(arg_tuples):
                continue
            plan = _packing_plan(func, self.target)
            if plan is None:
                continue
            if not all(
                isinstance(args, relax.Tuple) and isinstance(args.fields[plan[0]], Constant)
                for args in arg_tuples
            ):
                continue
            plans[gvar.name_hint] = plan
            packed[gvar.name_hint] = _pack_func(func, plan)
        if not plans:
            return mod
        rewriter = _CallSiteRewriter(mod, plans, packed)
        for gvar, func in mod.functions_items():
            if isinstance(func, relax.Function):
                rewriter.builder_.update_func(gvar, rewriter.visit_expr(func))
        rewritten = rewriter.builder_.get()
        kept = {gvar: func for gvar, func in rewritten.functions_items() if gvar.name_hint not in plans}
        return tvm.IRModule(kept, attrs=rewritten.attrs, global_infos=rewritten.global_infos)
