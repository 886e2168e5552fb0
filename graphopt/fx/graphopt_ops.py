"""Torch implementations of the graphopt ops (``pkg.graphopt``), registered as backend ``torch``:
``ops.implementations("torch")`` is the table ``to_torch`` reads, and the completeness test
(``tests/core/test_ops.py``) checks that every declared op has one here.

Eval mode: each function computes what the op's numpy reference computes; the integer ops step
for step in int64 (``>>`` on int64 is floor division by a power of two, as in the references),
so they are bit-exact. The float ops compute in the input's dtype (float16: in float32, then cast
back) and agree with the float64 reference to float rounding. Train mode is the same computation
today: straight-through estimators and learnable scales are a later increment (issue 18).
"""

from __future__ import annotations

import math

import torch

from graphopt import ops

__all__: list[str] = []

_INT31 = 2**31 - 1
_NO_MASK = -(2**31)


def _floor_div(a, b):
    return torch.div(a, b, rounding_mode="floor")


def _shift_exp(t, x0: int, n: int):
    """I-ViT ShiftExp of int64 ``t <= 0`` (graphopt.ops.shift_gelu.shift_exp)."""
    t = t + (t >> 1) - (t >> 4)
    t = torch.clamp(t, min=n * x0)
    q = _floor_div(t, x0)
    r = t - q * x0
    return ((r >> 1) - x0) << (n - q)


@ops.implements("Shiftmax", "torch")
def shiftmax(x, *, x0, n=15, out_bits=16, mask_below=_NO_MASK):
    x = x.to(torch.int64)
    keep = x >= mask_below
    e = torch.clamp(_shift_exp(x - x.amax(dim=-1, keepdim=True), int(x0), int(n)), min=0)
    e = torch.where(keep, e, torch.zeros((), dtype=torch.int64))
    total = torch.clamp(e.sum(dim=-1, keepdim=True), min=1, max=_INT31)
    f = _floor_div(torch.tensor(_INT31), total)
    return ((e * f) >> (32 - int(out_bits))).to(torch.int32)


@ops.implements("ShiftGelu", "torch")
def shift_gelu(x, *, x0, n=23, out_bits=8, row_max=1):
    x = x.to(torch.int64)
    top = x.amax(dim=-1, keepdim=True) if row_max else x
    m = torch.clamp(top, min=0)
    e_d = _shift_exp(x - m, int(x0), int(n))
    e_m = _shift_exp(-m, int(x0), int(n))
    total = torch.clamp(e_d + e_m, max=_INT31)
    f = _floor_div(torch.tensor(_INT31), total)
    sigma = _floor_div(e_d * f, 2 ** (32 - int(out_bits)))
    return (x * sigma).to(torch.int32)


def _int_sqrt(var):
    """I-ViT's 10 Newton steps from 2^16 (graphopt.ops.int_layer_norm.int_sqrt)."""
    k = torch.full_like(var, 1 << 16)
    for _ in range(10):
        k = _floor_div(k + _floor_div(var, k), 2)
    return k


@ops.implements("IntLayerNorm", "torch")
def int_layer_norm(x, mult, bias, *, shift=16, center=1):
    x = x.to(torch.int64)
    d = x.shape[-1]
    y = x - _floor_div(2 * x.sum(dim=-1, keepdim=True) + d, 2 * d) if int(center) else x
    k = _int_sqrt((y * y).sum(dim=-1, keepdim=True))
    n = _floor_div(y * _floor_div(torch.tensor((1 << 31) - 1), k), 2)
    affine = _floor_div(n * mult.to(torch.int64), 1 << int(shift))
    return (affine + bias.to(torch.int64)).to(torch.int32)


@ops.implements("DyadicRequant", "torch")
def dyadic_requant(x, multiplier, shift, *, out_bits=32):
    k = shift.to(torch.int64)
    product = x.to(torch.int64) * multiplier.to(torch.int64)
    q = (product + ((torch.ones_like(k) << k) >> 1)) >> k
    limit = 1 << (int(out_bits) - 1)
    return torch.clamp(q, -limit, limit - 1).to(torch.int32)


def _causal_fill(logits):
    sq, sk = logits.shape[-2:]
    above = torch.ones(sq, sk, dtype=torch.bool, device=logits.device).triu(1)
    return logits.masked_fill(above, -torch.inf)


@ops.implements("DotProductAttention", "torch")
def dot_product_attention(q, k, v, mask, *, scale=1.0, softcap=0.0, causal=0, nan_to_zero=0, zero_masked_rows=0):
    out_dtype = q.dtype
    if q.dtype in (torch.float16, torch.bfloat16):
        q, k, v, mask = (t.float() for t in (q, k, v, mask))
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    if softcap > 0:
        scores = softcap * torch.tanh(scores / softcap)
    logits = scores + mask
    if causal:
        logits = _causal_fill(logits)
    probs = torch.softmax(logits, dim=-1)
    zero = torch.zeros((), dtype=probs.dtype)
    if nan_to_zero:
        probs = torch.where(torch.isnan(probs), zero, probs)
    if zero_masked_rows:
        dead = torch.broadcast_to(mask, logits.shape).amax(dim=-1, keepdim=True) == -torch.inf
        probs = torch.where(dead, zero, probs)
    return torch.matmul(probs, v).to(out_dtype)


@ops.implements("SigmoidLinearUnit", "torch")
def sigmoid_linear_unit(x):
    return x * torch.sigmoid(x)


@ops.implements("ActivationThreshold", "torch")
def activation_threshold(x, t):
    return torch.where(torch.abs(x) > t.to(x.dtype), x, torch.zeros((), dtype=x.dtype))


@ops.implements("SparseInputMatMul", "torch")
def sparse_input_matmul(x, w):
    return torch.matmul(x, w)  # dense: which rows a kernel may skip changes nothing in the result


@ops.implements("SparseGatedMatMul", "torch")
def sparse_gated_matmul(a, x, wt):
    product = torch.matmul(x, wt.transpose(-1, -2))
    return torch.where(a != 0, a * product, torch.zeros((), dtype=x.dtype))


@ops.implements("SparseInputMatMulInt8", "torch")
def sparse_input_matmul_int8(x, wq, scale):
    return torch.matmul(x, wq.to(x.dtype)) * scale


@ops.implements("SparseGatedMatMulInt8", "torch")
def sparse_gated_matmul_int8(a, x, wtq, scale):
    product = torch.matmul(x, wtq.to(x.dtype).transpose(-1, -2)) * scale
    return torch.where(a != 0, a * product, torch.zeros((), dtype=x.dtype))


@ops.implements("LinearizedAttention", "torch")
def linearized_attention(qf, kf, v, decay, *, causal=0, eps=1e-6):
    out_dtype = qf.dtype
    if qf.dtype in (torch.float16, torch.bfloat16):
        qf, kf, v, decay = (t.float() for t in (qf, kf, v, decay))
    if causal:
        dist = (torch.arange(qf.shape[-2], device=qf.device)[:, None]
                - torch.arange(kf.shape[-2], device=qf.device)[None, :])
        powers = torch.pow(decay.to(qf.dtype), dist.clamp(min=0).to(qf.dtype))
        masked = torch.matmul(qf, kf.transpose(-1, -2)) * torch.where(dist >= 0, powers, torch.zeros((), dtype=qf.dtype))
        num, den = torch.matmul(masked, v), masked.sum(dim=-1, keepdim=True)
    else:
        num = torch.matmul(qf, torch.matmul(kf.transpose(-1, -2), v))
        den = (qf * kf.sum(dim=-2, keepdim=True)).sum(dim=-1, keepdim=True)
    return (num / (den + eps)).to(out_dtype)


@ops.implements("WindowedLinearAttention", "torch")
def windowed_linear_attention(q, k, qf, kf, v, gamma, *, window=64, scale=1.0, causal=0):
    out_dtype = q.dtype
    if q.dtype in (torch.float16, torch.bfloat16):
        q, k, qf, kf, v, gamma = (t.float() for t in (q, k, qf, kf, v, gamma))
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    linear = torch.matmul(qf, kf.transpose(-1, -2))
    dist = torch.arange(q.shape[-2], device=q.device)[:, None] - torch.arange(k.shape[-2], device=q.device)[None, :]
    visible = (dist >= 0) | (not causal)
    inside, outside = (dist.abs() < window) & visible, (dist.abs() >= window) & visible
    row_max = scores.masked_fill(~inside, -torch.inf).amax(dim=-1, keepdim=True)
    shift = torch.where(torch.isinf(row_max), torch.zeros((), dtype=scores.dtype), row_max)
    zero = torch.zeros((), dtype=scores.dtype)
    soft = torch.where(inside, torch.exp(torch.where(inside, scores - shift, zero)), zero)
    weights = soft * gamma.to(scores.dtype) + torch.where(outside, linear, zero)
    return (torch.matmul(weights, v) / weights.sum(dim=-1, keepdim=True)).to(out_dtype)


@ops.implements("ShiftMatMul", "torch")
def shift_matmul(x, p, s, *, bits=5, zero_free=0):
    bits = int(bits)
    per_word, half = 31 // bits, 1 << (bits - 1)
    shifts = torch.arange(per_word, dtype=torch.int64, device=p.device).view(1, -1, 1) * bits
    codes = ((p.to(torch.int64).unsqueeze(1) >> shifts) & ((1 << bits) - 1)).reshape(-1, p.shape[-1])[: x.shape[-1]]
    sign, e = codes // half, codes % half
    d = torch.ldexp(torch.ones_like(e, dtype=torch.float32), -e) * (1 - 2 * sign).to(torch.float32)
    if not int(zero_free):
        d = torch.where(e == half - 1, torch.zeros((), dtype=torch.float32), d)
    return (torch.matmul(x, d.to(x.dtype)) * s.to(x.dtype)).to(x.dtype)


@ops.implements("MaskedAddMatMul", "torch")
def masked_add_matmul(bits, x, *, k):
    shifts = torch.arange(16, dtype=torch.int64, device=bits.device)
    mask = ((bits.to(torch.int64).unsqueeze(-1) >> shifts) & 1).flatten(-2)[..., : int(k)]
    wide = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    return torch.matmul(mask.to(wide), x.to(wide)).to(x.dtype)  # 0/1 operand: sums of the selected rows


def _shift_decoded(p, k: int, bits: int, zero_free: int):
    """ShiftMatMul's packed codes -> the float32 weights ±2^-e [k, N] (graphopt.ops.shift_matmul.decode)."""
    per_word, half = 31 // bits, 1 << (bits - 1)
    shifts = torch.arange(per_word, dtype=torch.int64, device=p.device).view(1, -1, 1) * bits
    codes = ((p.to(torch.int64).unsqueeze(1) >> shifts) & ((1 << bits) - 1)).reshape(-1, p.shape[-1])[:k]
    sign, e = codes // half, codes % half
    d = torch.ldexp(torch.ones_like(e, dtype=torch.float32), -e) * (1 - 2 * sign).to(torch.float32)
    return d if zero_free else torch.where(e == half - 1, torch.zeros((), dtype=torch.float32), d)


@ops.implements("ShiftConv", "torch")
def shift_conv(x, p, s, b, *, kernel_shape, bits=5, zero_free=0, group=1, strides=None, pads=None, dilations=None):
    kernel, group = [int(k) for k in kernel_shape], int(group)
    rank = len(kernel)
    per_group = x.shape[1] // group
    k = per_group * math.prod(kernel)
    w = _shift_decoded(p, k, int(bits), int(zero_free)).T.reshape(p.shape[-1], per_group, *kernel).to(x.dtype)
    pads = list(pads) if pads else [0] * 2 * rank
    begin, end = pads[:rank], pads[rank:]
    if begin != end:  # torch pads symmetrically: the asymmetric part first, with zeros
        x = torch.nn.functional.pad(x, [v for i in reversed(range(rank)) for v in (begin[i], end[i])])
        begin = [0] * rank
    conv = (torch.nn.functional.conv1d, torch.nn.functional.conv2d, torch.nn.functional.conv3d)[rank - 1]
    y = conv(x, w, None, list(strides) if strides else 1, begin, list(dilations) if dilations else 1, group)
    channel = (1, -1) + (1,) * rank
    return y * s.to(x.dtype).reshape(channel) + b.to(x.dtype).reshape(channel)


@ops.implements("ShiftMatMulInteger", "torch")
def shift_matmul_integer(x, p, *, bits=5, zero_free=0):
    bits = int(bits)
    per_word, half = 31 // bits, 1 << (bits - 1)
    shifts = torch.arange(per_word, dtype=torch.int64, device=p.device).view(1, -1, 1) * bits
    codes = ((p.to(torch.int64).unsqueeze(1) >> shifts) & ((1 << bits) - 1)).reshape(-1, p.shape[-1])[: x.shape[-1]]
    sign, e = codes // half, codes % half
    d = torch.ones_like(e) << e
    d = torch.where(sign == 1, -d, d)
    if not int(zero_free):
        d = torch.where(e == half - 1, torch.zeros_like(d), d)
    return torch.matmul(x.to(torch.int64), d).to(torch.int32)  # int64 sums wrapped to int32, as the reference


@ops.implements("LinearAttentionStep", "torch")
def linear_attention_step(qf, kf, v, s, z, decay, *, eps=1e-6):
    lam = decay.to(s.dtype)
    s_next = lam * s + torch.matmul(kf.transpose(-1, -2), v)
    z_next = lam * z + kf.sum(dim=-2, keepdim=True)
    y = torch.matmul(qf, s_next) / ((qf * z_next).sum(dim=-1, keepdim=True) + eps)
    return y, s_next, z_next
