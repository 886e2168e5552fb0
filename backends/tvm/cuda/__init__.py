"""The CUDA target of graphopt's TVM backend.

    pipeline.py  gpu_pipeline(target, database=None): TVM's CUDA Relax pipeline, scheduling by
                 database -> graphopt rules -> dlight, then a check that every kernel is scheduled
    rules.py     graphopt's GPU schedule rules (integer matmuls: tensor cores / CUDA cores)
    verify.py    unscheduled_functions(mod) / check_scheduled(): name kernels left without a schedule
    nvcc.py      compile_source(cuda_source, arch): nvcc on the generated kernels, GPU or not
"""

from graphopt.backends.tvm._fast_script import fast_tvmscript_parsing

with fast_tvmscript_parsing():  # the rules import TVM's CUDA tensor intrinsics: hundreds of prim_funcs
    from graphopt.backends.tvm.cuda.pipeline import gpu_pipeline

__all__ = ["gpu_pipeline"]
