"""aarch64 int8 matmul kernels of graphopt's TVM CPU backend (``+dotprod``: ``sdot``).

    sdot_intrin.py  the ``sdot`` tensor intrinsic (4 int32 lanes, 4 int8 products each)
    sdot_matmul.py  MatMulInteger / ConvInteger kernels: uint8 operands made int8 with exact corrections

The converters in ``graphopt.backends.tvm.convert`` choose them for aarch64 targets with ``+dotprod``.
"""
