"""Shared helpers of graphopt's CPU schedule rules: target facts, loop-nest analysis, small schedule steps.

The rules (matmul, row reduction, elementwise, fallback) all need the same few things: how many
lanes a SIMD register holds for a dtype on this target, whether a PrimFunc was already scheduled by
someone else, the static extent of a loop, and "parallelize the outer loops, vectorize the inner
one" for a spatial loop nest. They live here so every rule does them the same way.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.target import Target
from tvm.target.codegen import llvm_get_vector_width, target_has_features

# Both spellings: TVM 0.27 writes "tirx.is_scheduled"; hand-written kernels may carry the older name.
SCHEDULED_ATTRS = ("tirx.is_scheduled", "tir.is_scheduled")
# Parallel chunks we want per core, so uneven work still balances.
TASKS_PER_CORE = 4
# Below this many output elements a function is not worth a parallel region (fork/join costs ~µs).
MIN_PARALLEL_ELEMENTS = 4096


def pad_to(value: int, multiple: int) -> int:
    """``value`` rounded up to a multiple of ``multiple`` (the padded extent of a tiled axis)."""
    return -(-value // multiple) * multiple


def is_scheduled(func: tirx.PrimFunc) -> bool:
    """True when the PrimFunc carries a truthy ``tirx.is_scheduled`` / ``tir.is_scheduled`` attribute."""
    attrs = func.attrs
    if attrs is None:
        return False
    return any(key in attrs and bool(attrs[key]) for key in SCHEDULED_ATTRS)


def is_cpu_target(target: Target) -> bool:
    return target.kind.name in ("llvm", "c")


def vector_bits(target: Target) -> int:
    """Width of one SIMD register in bits (AVX2: 256, AVX-512: 512, NEON: 128).

    LLVM reports 512 for some AVX2-only CPUs (e.g. znver3), so x86 is decided by its features.
    """
    try:
        if target_has_features("avx512f", target):
            return 512
        if target_has_features("avx2", target) or target_has_features("avx", target):
            return 256
        width = llvm_get_vector_width(target)
    except Exception:  # noqa: BLE001 - a target LLVM cannot describe: assume 128-bit SIMD
        width = -1
    return width if 0 < width <= 256 else 128


def vector_lanes(target: Target, dtype: str) -> int:
    """How many elements of ``dtype`` one SIMD register holds (at least 2)."""
    bits = tvm_dtype_bits(dtype)
    return max(vector_bits(target) // bits, 2)


def tvm_dtype_bits(dtype) -> int:
    from tvm import DataType  # noqa: PLC0415

    bits = DataType(str(dtype)).bits
    return 8 if bits < 8 else bits  # bool is 1 bit but stored in a byte


def num_cores(target: Target) -> int:
    cores = target.attrs.get("num-cores") if target.attrs is not None else None
    if cores:
        return int(cores)
    import os  # noqa: PLC0415

    return os.cpu_count() or 1


def has_block(sch: s_tir.Schedule, name: str) -> bool:
    """Whether the schedule has a block named ``name`` (a pre-scheduled kernel's optional stages)."""
    try:
        sch.get_sblock(name)
    except s_tir.ScheduleError:
        return False
    return True


def static_extent(sch: s_tir.Schedule, loop) -> int | None:
    extent = sch.get(loop).extent
    return int(extent) if isinstance(extent, tirx.IntImm) else None


def output_dtype(sch: s_tir.Schedule, block) -> str:
    writes = sch.get(block).writes
    return str(writes[0].source.dtype) if writes else "float32"


def vector_split(extent: int | None, lanes: int) -> int:
    """The vector width to split a loop of ``extent`` by: ``lanes`` when it divides the extent, else
    the largest power of two below it that does (no tail predicate), else 1 (do not vectorize)."""
    if extent is None:
        return lanes
    width = lanes
    while width > 1 and extent % width:
        width //= 2
    return width


def parallel_vectorize(sch: s_tir.Schedule, block, lanes: int, cores: int, serial_inner: int = 0):
    """Schedule the spatial loop nest of ``block``: vectorize the innermost loop by ``lanes`` and
    fuse + parallelize as few outer loops as give ``TASKS_PER_CORE`` chunks per core.

    With ``serial_inner`` > 0 that many trailing loops (a reduction below the spatial ones) are
    left alone and nothing is vectorized. Returns the parallel loop, or None when the nest is too
    small to be worth a thread pool.
    """
    loops = sch.get_loops(block)
    spatial = list(loops[: len(loops) - serial_inner])
    if not spatial:
        return None
    extents = [static_extent(sch, loop) for loop in spatial]
    total = 1
    for extent in extents:
        total = None if total is None or extent is None else total * extent

    if not serial_inner:
        inner, extent = spatial.pop(), extents.pop()
        width = vector_split(extent, lanes)
        if width > 1 and extent != width:
            rest, inner = sch.split(inner, factors=[None, width])
            spatial.append(rest)
            extents.append(None if extent is None else extent // width)
        if width > 1:
            sch.vectorize(inner)
    if not spatial or (total is not None and total < MIN_PARALLEL_ELEMENTS) or cores <= 1:
        return None
    want = cores * TASKS_PER_CORE
    take, chunks = 0, 1
    for extent in extents:
        take += 1
        chunks = want if extent is None else chunks * extent
        if chunks >= want:
            break
    outer = sch.fuse(*spatial[:take]) if take > 1 else spatial[0]
    sch.parallel(outer)
    return outer


def one_reduction(func, target: Target | None = None):
    """(schedule, block infos, the reduction block) of a PrimFunc with exactly one reduction block
    (on a CPU ``target`` when one is given), else None: where the matmul and window rules start."""
    if not isinstance(func, tirx.PrimFunc) or (target is not None and not is_cpu_target(target)):
        return None
    sch = s_tir.Schedule(func)
    infos = normalize_prim_func(sch)
    if infos is None:
        return None
    reductions = [info for info in infos if not info.is_injective()]
    return (sch, infos, reductions[0].block_rv) if len(reductions) == 1 else None
