"""x86 int8 matmul kernels of graphopt's TVM CPU backend: tensor intrinsics and pre-scheduled kernels.

    avx2_intrin.py         AVX2 intrinsics: the sign trick (exact ``vpmaddubsw`` for int8 weights in
                           [-127, 127]) and int16 ``vpmaddwd``
    avx2_weight_layout.py  constant weights packed in numpy into the AVX2 kernels' [N/8, K/kw, 8, kw] blocks
    avx2_matmul.py         the AVX2 MatMulInteger / ConvInteger kernels
    vnni_intrin.py         ``vpdpbusd`` intrinsics, 512-bit (AVX-512 VNNI) and 256-bit (AVX-VNNI)
    vnni_matmul.py         the VNNI kernels: uint8 × int8 with exact corrections, ahead of the AVX2 ones

The converters in ``graphopt.backends.tvm.convert`` choose among them from the target's CPU.
"""
