"""Binary codes for ``binary-attention``: hash Q and K to {0,1}^nbits, fitted on calibration data.

A code is one hyperplane test per bit, per head h:

    c(x) = 1[x·W_h + b_h > 0] ∈ {0,1}^nbits          W_h [D, nbits], b_h [nbits]

with separate (W, b) for queries and keys (asymmetric hashing: Q and K of a trained layer live in
different subspaces). The attention kernel is a count of bits (``similarity``):

- ``and``:     κ(q, k) = c(q)·c(k)                = the bits set in both codes (features: c)
- ``hamming``: κ(q, k) = c(q)·c(k) + c̄(q)·c̄(k)   = nbits − Hamming(c(q), c(k)) (features: [c, 1−c],
  EcoFormer's Hamming affinity; never 0 unless the codes are complements)

so linear attention over the features needs no multiplication: Kfᵀ·V sums the V rows whose bit is
set, Qf·(Kfᵀ·V) sums the rows of that state selected by the query's bits (masked additions).
``code_bits`` builds the features as bool ONNX values, ``pack_last_axis`` packs them 16 to an int32
word at run time (``MaskedAddMatMul``'s operand), ``binary_codes`` casts them to floats (the
LinearizedAttention form the causal attentions keep).

Fitting (``fit_binary_codes``), per head, all heads at once, torch on the CPU:

1. Initialization (``steps=0`` stops here): the top principal directions of the head's Q and K rows
   together (random unit directions, seeded, past D), each scaled to unit spread, and thresholds at
   the median of the queries' and of the keys' projections (every bit is set on half the rows:
   balanced codes, the most information per bit — the standard spectral-hashing start).
2. Distillation against softmax attention (as Hedgehog's fit, ``passes/_hedgehog.py``): targets
   A = softmax(scale·QKᵀ [causal]); weights Â_ij = (κ(q_i, k_j) + δ) / Σ_j' (κ(q_i, k_j') + δ); the
   codes are hard in the forward pass and take the gradient of sigmoid(u) backward (straight-through,
   so the loss is the one of the codes used at inference); δ = ``SMOOTH`` (training only) keeps a
   gradient on keys that share no bit with the query; loss: cross-entropy −Σ A log Â, Adam lr
   ``LEARNING_RATE``. (Measured on the digits ViT's two attentions, 128 calibration images, 200 steps:
   straight-through with δ = 0.3 reaches attention-output cosine 0.915 / 0.935 to softmax; a sigmoid
   relaxation annealed to the step 0.914 / 0.914; δ = 0 collapses (cosine 0.004): without it a key with
   no shared bit gets no gradient and the clamped log rewards empty codes.)
3. The hard codes of the end and of the initialization are scored (KL of their weights to A, with
   δ = ``SCORE_SMOOTH`` so a query sharing no bit with any key counts as uniform weights, on the same
   samples); the better one is returned: the fit never makes the codes worse than the initialization
   on what it measured.

Deterministic (seeded, ``torch.use_deterministic_algorithms``, one thread, seeded sample draws);
``steps`` bounds the work, ``seconds`` the wall time (``info["stopped_by"]`` says which ended it).
The mask of the attention is not part of the fit (a key-padding mask is applied at inference by
weighting the keys; see ``passes/binary_attention.py``).
"""

from __future__ import annotations

import time

import numpy as np
import onnx_ir as ir

from graphopt.ops.masked_add_matmul import BITS_PER_WORD
from graphopt.passes._hedgehog import captured_heads, deterministic_torch

__all__ = ["SIMILARITIES", "binary_codes", "binary_codes_numpy", "code_bits", "code_features_numpy", "fit_binary_codes",
           "pack_last_axis"]

SIMILARITIES = ("and", "hamming")
LEARNING_RATE = 2e-2
SMOOTH = 0.3  # added to the kernel while training (see above)
SCORE_SMOOTH = 1e-3  # added to the kernel when the candidates are scored
_INIT_ROWS = 8192  # rows per head the principal directions are computed on


def binary_codes_numpy(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """c(x) for x [.., H, S, D], w [H, D, n] (or [D, n]), b [H, n] (or [n]) -> [.., H, S, n] float64 in {0, 1}."""
    w, b = np.asarray(w, np.float64), np.asarray(b, np.float64)
    u = np.matmul(np.asarray(x, np.float64), w) + (b[:, None, :] if b.ndim == 2 else b)
    return (u > 0).astype(np.float64)


def code_features_numpy(codes: np.ndarray, similarity: str) -> np.ndarray:
    return codes if similarity == "and" else np.concatenate([codes, 1.0 - codes], axis=-1)


def binary_codes(op, x: ir.Value, w: np.ndarray, b: np.ndarray, similarity: str, dtype: ir.DataType) -> ir.Value:
    """The features as ONNX ops in ``dtype``: Cast(Greater(x·W + b, 0)) ([c, 1-c] for ``hamming``).

    ``w`` [H, D, n] or [D, n], ``b`` [H, n] or [n] (numpy, made ``Constant`` nodes of ``dtype``); x's
    axis -3 is the head axis when w has one."""
    return op.Cast(code_bits(op, x, w, b, similarity, dtype), to=dtype)


def code_bits(op, x: ir.Value, w: np.ndarray, b: np.ndarray, similarity: str, dtype: ir.DataType) -> ir.Value:
    """The features as a bool tensor [.., F]: Greater(x·W + b, 0) ([c, Not(c)] for ``hamming``)."""
    numpy_dtype = dtype.numpy()
    b = np.asarray(b)
    bias = b.reshape(b.shape[0], 1, b.shape[1]) if b.ndim == 2 else b
    u = op.Add(op.MatMul(x, op.Constant(value=ir.tensor(np.asarray(w).astype(numpy_dtype)))),
               op.Constant(value=ir.tensor(bias.astype(numpy_dtype))))
    bits = op.Greater(u, op.Constant(value=ir.tensor(np.zeros((), numpy_dtype))))
    return bits if similarity == "and" else op.Concat(bits, op.Not(bits), axis=-1)


def pack_last_axis(op, bits: ir.Value, length: int, rank: int) -> ir.Value:
    """bool [.., L] (rank ``rank``, L = ``length`` static) -> int32 words [.., ceil(L/16)], MaskedAddMatMul's
    packing (bit b of word w is element 16·w + b): Cast to int32, zero-padded to whole words, Reshape
    [.., W, 16], the bit weights 2^b, ReduceSum over the 16 (a bit-weighted sum: standard ops only)."""
    ints = op.Cast(bits, to=ir.DataType.INT32)
    if length % BITS_PER_WORD:
        pads = np.zeros(2 * rank, np.int64)
        pads[-1] = -length % BITS_PER_WORD  # the end of the last axis only
        ints = op.Pad(ints, op.Constant(value=ir.tensor(pads)))
    grouped = op.Reshape(ints, op.Constant(value=ir.tensor(np.array([0] * (rank - 1) + [-1, BITS_PER_WORD], np.int64))))
    weighted = op.Mul(grouped, op.Constant(value=ir.tensor(np.left_shift(1, np.arange(BITS_PER_WORD, dtype=np.int32)))))
    return op.ReduceSum(weighted, op.Constant(value=ir.tensor(np.array([-1], np.int64))), keepdims=0)


def _initial(q3: np.ndarray, k3: np.ndarray, nbits: int, seed: int):
    """Principal directions (unit spread) and median thresholds, per head: (w [H, D, n], bq [H, n], bk [H, n])."""
    heads, dim = q3.shape[1], q3.shape[-1]
    rng = np.random.default_rng(seed)
    w = np.zeros((heads, dim, nbits))
    bq, bk = np.zeros((heads, nbits)), np.zeros((heads, nbits))
    for h in range(heads):
        qr = q3[:, h].reshape(-1, dim).astype(np.float64)
        kr = k3[:, h].reshape(-1, dim).astype(np.float64)
        rows = np.concatenate([qr, kr])
        if len(rows) > _INIT_ROWS:
            rows = rows[np.linspace(0, len(rows) - 1, _INIT_ROWS).astype(np.int64)]
        centered = rows - rows.mean(0)
        _, _, vt = np.linalg.svd(centered, full_matrices=False)
        directions = vt[: min(nbits, dim)]
        if nbits > len(directions):
            extra = rng.standard_normal((nbits - len(directions), dim))
            directions = np.concatenate([directions, extra / np.linalg.norm(extra, axis=1, keepdims=True)])
        spread = (centered @ directions.T).std(0)
        w[h] = directions.T / np.where(spread > 1e-12, spread, 1.0)
        bq[h] = -np.median(qr @ w[h], axis=0)
        bk[h] = -np.median(kr @ w[h], axis=0)
    return w, bq, bk


def fit_binary_codes(q: np.ndarray, k: np.ndarray, *, scale: float, causal: bool = False, nbits: int = 16,
                     similarity: str = "and", steps: int = 200, seconds: float = 30.0, seed: int = 0,
                     info: dict | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-head codes fitted on captured Q [.., H, Sq, D], K [.., H|1, Sk, D]: (wq [H, D, n], bq [H, n],
    wk, bk) float32. ``info`` receives steps, stopped_by, seconds, samples_per_step, the hard-code KL
    of the initialization and of the end (``kl_init``, ``kl_end``), ``kept`` ("fit" or "init")."""
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
    q3, k3, per_step = captured_heads(q, k, causal)
    samples, heads, sq, _ = q3.shape
    sk = k3.shape[2]
    start = time.perf_counter()
    w0, bq0, bk0 = _initial(q3, k3, nbits, seed)
    with deterministic_torch(seed) as torch:
        qt = torch.from_numpy(np.ascontiguousarray(q3, np.float32))
        kt = torch.from_numpy(np.ascontiguousarray(k3, np.float32))
        mask = torch.ones(sq, sk).tril().bool() if causal else None

        def target_of(index):
            logits = torch.matmul(qt[index], kt[index].transpose(-1, -2)) * scale
            if mask is not None:
                logits = logits.masked_fill(~mask, float("-inf"))
            return torch.softmax(logits, dim=-1)

        def features(x, w, b, train):
            u = torch.matmul(x, w) + b
            c = (u > 0).to(x.dtype)
            if train:  # hard codes forward, the sigmoid's gradient backward (straight-through)
                soft = torch.sigmoid(u)
                c = c + soft - soft.detach()
            return c if similarity == "and" else torch.cat([c, 1 - c], dim=-1)

        def cross_entropy(index, params, train, target=None):
            wq, bq, wk, bk = params
            num = torch.matmul(features(qt[index], wq, bq, train), features(kt[index], wk, bk, train).transpose(-1, -2))
            num = num + (SMOOTH if train else SCORE_SMOOTH)
            if mask is not None:
                num = num * mask
            log_lin = torch.log(num.clamp_min(1e-30)) - torch.log(num.sum(-1, keepdim=True).clamp_min(1e-30))
            target = target_of(index) if target is None else target
            return -(target * torch.where(target > 0, log_lin, torch.zeros(()))).sum(-1).mean()

        def tensors(w, bq, bk):
            return [torch.tensor(w, dtype=torch.float32), torch.tensor(bq[:, None, :], dtype=torch.float32),
                    torch.tensor(w, dtype=torch.float32), torch.tensor(bk[:, None, :], dtype=torch.float32)]

        init = tensors(w0, bq0, bk0)
        score_index = torch.arange(per_step)  # the samples both candidates are scored on
        with torch.no_grad():
            target = target_of(score_index)
            entropy = float(-(torch.where(target > 0, target * torch.log(target), torch.zeros(()))).sum(-1).mean())
            kl_init = float(cross_entropy(score_index, init, False, target)) - entropy
        params = [torch.nn.Parameter(t.clone()) for t in init]
        optimizer = torch.optim.Adam(params, lr=LEARNING_RATE)
        generator = torch.Generator().manual_seed(seed)
        everything = torch.arange(samples)
        done, stopped_by = 0, "steps"
        for _ in range(steps):
            index = torch.randperm(samples, generator=generator)[:per_step] if per_step < samples else everything
            optimizer.zero_grad()
            loss = cross_entropy(index, params, True)
            loss.backward()
            optimizer.step()
            done += 1
            if time.perf_counter() - start > seconds and done < steps:
                stopped_by = "seconds"
                break
        with torch.no_grad():
            kl_end = float(cross_entropy(score_index, params, False, target)) - entropy if done else kl_init
        best = params if done and kl_end <= kl_init else init
        wq, bq, wk, bk = (t.detach().numpy().astype(np.float32).copy() for t in best)
    if info is not None:
        info.update(steps=done, stopped_by=stopped_by, seconds=round(time.perf_counter() - start, 3),
                    samples_per_step=per_step, kl_init=kl_init, kl_end=kl_end,
                    kept="fit" if done and kl_end <= kl_init else "init")
    return wq, bq[:, 0, :], wk, bk[:, 0, :]
