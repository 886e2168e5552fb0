"""Hedgehog feature maps for ``linear-attention(feature_map=hedgehog)``: fitted per head by attention distillation.

Hedgehog (Zhang et al., ICLR 2024; LoLCATs' ``softmax_dim`` form) replaces softmax attention's
kernel exp(scale·q·k) by φ(q)·φ(k) with a small learned map per head h:

    u = x·W_h + b_h                    W_h [D, D] (initialized to the identity), b_h [D] (zeros)
    φ(x) = [softmax(u), softmax(-u)]   softmaxes over the feature axis: F = 2D, non-negative

φ is applied to the raw Q and K (no scale folded: W absorbs it), and the same map serves queries
and keys of one head. Fitting (``fit_hedgehog``): from a layer's captured Q, K [.., H, S, D] the
target weights are A = softmax(scale·QKᵀ [+ causal mask]); the linear weights are
Â_ij = φ(q_i)·φ(k_j) / Σ_j' φ(q_i)·φ(k_j') (j <= i when causal); the loss is the cross-entropy
-Σ_j A_ij log Â_ij averaged over rows (its gradient is the KL's), minimized with Adam (lr 1e-2,
LoLCATs' attention-transfer rate) in torch on the CPU, all heads at once. Deterministic: seeded,
``torch.use_deterministic_algorithms``, one thread, the samples of each step drawn from a seeded
generator; ``steps`` bounds the work and ``seconds`` the wall time (a fit stopped by the clock
depends on the machine's speed: ``info["stopped_by"]`` says which bound ended it).

``hedgehog_features(op, x, w, b)`` builds φ as ONNX ops (MatMul, Add, Softmax, Neg, Concat) in a
rewrite; ``hedgehog_features_numpy`` is the same in numpy; ``attention_kl`` scores any feature map
against softmax attention (the test, and a pass's report).

Calling it from a pass (``passes/linear_attention.py``): capture every attention's Q and K over the
calibration samples (``self.calibrate(model, names).values(name)`` stacked on a new leading axis),
then ``w, b = fit_hedgehog(q, k, scale=node_scale, causal=node_causal, steps=..., seconds=...,
seed=...)``, keep (w, b) on the rule for its rewrite, and there ``qf = hedgehog_features(op, q, w, b)``
(and the same for k) with the arrays as initializers or constants of Q's dtype; Q's axis -3 is the
head axis (size H, or 1 for a single head).
"""

from __future__ import annotations

import contextlib
import time

import numpy as np
import onnx_ir as ir

from graphopt.passes._window_fit import hybrid_weights_torch

__all__ = ["attention_kl", "captured_heads", "deterministic_torch", "elu_plus_one", "fit_hedgehog", "fit_model_maps", "hedgehog_features", "hedgehog_features_numpy",
           "softmax_attention"]

LEARNING_RATE = 1e-2  # LoLCATs' attention-transfer learning rate
GAMMA_INIT = 0.1  # LoLCATs' hybrid: γ = sigmoid(-2.197) at the start
MAX_ELEMENTS_PER_STEP = 1 << 22  # samples per step: at most this many attention weights (B·H·S·S)


def _heads(x: np.ndarray) -> np.ndarray:
    """[.., H, S, D] -> [B, H, S, D] (leading axes flattened; rank 3 is one sample)."""
    x = np.asarray(x)
    if x.ndim < 3:
        raise ValueError(f"expected [.., H, S, D], got shape {x.shape}")
    return x.reshape(-1, *x.shape[-3:])


def captured_heads(q, k, causal: bool) -> tuple[np.ndarray, np.ndarray, int]:
    """Captured Q [.., H, Sq, D] and K [.., H|1, Sk, D] as [B, H, S, D] (K's one head broadcast: grouped
    queries), checked for a fit; with the samples per step that keep a step's attention weights
    under ``MAX_ELEMENTS_PER_STEP``."""
    q3, k3 = _heads(q), _heads(k)
    if k3.shape[1] == 1 and q3.shape[1] > 1:
        k3 = np.broadcast_to(k3, (k3.shape[0], q3.shape[1], *k3.shape[2:])).copy()
    if q3.shape[:2] != k3.shape[:2] or q3.shape[-1] != k3.shape[-1]:
        raise ValueError(f"Q {q3.shape} and K {k3.shape} differ in samples, heads or head dimension")
    if causal and q3.shape[2] != k3.shape[2]:
        raise ValueError(f"causal fitting needs Sq == Sk, got {q3.shape[2]} and {k3.shape[2]}")
    samples, heads, sq, _ = q3.shape
    return q3, k3, max(1, min(samples, MAX_ELEMENTS_PER_STEP // max(1, heads * sq * k3.shape[2])))


# --- numpy: the map, softmax attention, the score ---------------------------------------------------


def _softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def hedgehog_features_numpy(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """φ(x) for x [.., H, S, D], w [H, D, D], b [H, D] -> [.., H, S, 2D] (float64)."""
    u = np.matmul(np.asarray(x, np.float64), np.asarray(w, np.float64)) + np.asarray(b, np.float64)[:, None, :]
    return np.concatenate([_softmax(u), _softmax(-u)], axis=-1)


def elu_plus_one(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return np.where(x > 0, x + 1.0, np.exp(np.minimum(x, 0.0)))


def softmax_attention(q: np.ndarray, k: np.ndarray, *, scale: float, causal: bool) -> np.ndarray:
    """softmax(scale·QKᵀ [causal mask]) [.., S, S] in float64."""
    s = np.matmul(np.asarray(q, np.float64), np.swapaxes(np.asarray(k, np.float64), -1, -2)) * scale
    if causal:
        s = np.where(np.triu(np.ones(s.shape[-2:], bool), 1), -np.inf, s)
    return _softmax(s)


def attention_kl(q: np.ndarray, k: np.ndarray, qf: np.ndarray, kf: np.ndarray, *, scale: float, causal: bool) -> float:
    """Mean over rows of KL(softmax attention || linear attention weights of the features qf, kf)."""
    a = softmax_attention(q, k, scale=scale, causal=causal)
    num = np.matmul(np.asarray(qf, np.float64), np.swapaxes(np.asarray(kf, np.float64), -1, -2))
    if causal:
        num = np.where(np.triu(np.ones(num.shape[-2:], bool), 1), 0.0, num)
    lin = num / num.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(a > 0, a * (np.log(a) - np.log(np.maximum(lin, 1e-300))), 0.0)
    return float(terms.sum(axis=-1).mean())


# --- torch: the fit ------------------------------------------------------------------------------------


@contextlib.contextmanager
def deterministic_torch(seed: int):
    import torch  # noqa: PLC0415

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield torch
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.set_num_threads(threads)


def fit_hedgehog(q: np.ndarray, k: np.ndarray, *, scale: float, causal: bool = False, steps: int = 200,
                 seconds: float = 60.0, seed: int = 0, key_mask: np.ndarray | None = None,
                 info: dict | None = None, window: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-head Hedgehog maps fitted on captured Q, K [.., H, S, D]: (W [H, D, D], b [H, D]) float32.

    ``key_mask``: an additive key-padding mask, one row of Sk values per sample ([B, Sk], or any
    shape that reshapes to it), added to the target's logits and applied to the linear weights as
    the pass applies it (Kf_j · exp(mask_j)), so padded keys take part in neither.

    ``steps``: Adam steps at most; ``seconds``: wall-time budget (checked after each step, at least
    one step runs). ``info`` (a dict) receives ``steps``, ``stopped_by`` ("steps" or "seconds"),
    ``seconds``, and the training loss (cross-entropy) and KL at the start and the end.

    ``window > 0``: the student is LoLCATs' hybrid (``graphopt/ops/hybrid_attention.py``): softmax over
    the keys |i - j| < window, these maps outside it, mixed by a per-head γ fitted jointly (its log a
    parameter, initialized at LoLCATs' 0.1); ``info["gamma"]`` receives the per-head γ (``passes/_window_fit.py``).
    """
    q3, k3, per_step = captured_heads(q, k, causal)
    samples, heads, sq, dim = q3.shape
    sk = k3.shape[2]
    start = time.perf_counter()
    with deterministic_torch(seed) as torch:
        qt = torch.from_numpy(np.ascontiguousarray(q3, np.float32))
        kt = torch.from_numpy(np.ascontiguousarray(k3, np.float32))
        mask = torch.ones(sq, sk).tril().bool() if causal else None
        key_log = None
        if key_mask is not None:
            key_log = torch.from_numpy(np.asarray(key_mask, np.float32).reshape(samples, 1, 1, sk).copy())
        with torch.no_grad():
            logits = torch.matmul(qt, kt.transpose(-1, -2)) * scale
            if key_log is not None:
                logits = logits + key_log
            if mask is not None:
                logits = logits.masked_fill(~mask, float("-inf"))
            target = torch.softmax(logits, dim=-1)
            entropy = -(torch.where(target > 0, target * torch.log(target), torch.zeros(()))).sum(-1).mean(dim=(1, 2))
        weight = torch.nn.Parameter(torch.eye(dim).repeat(heads, 1, 1))
        bias = torch.nn.Parameter(torch.zeros(heads, 1, dim))
        log_gamma = torch.nn.Parameter(torch.full((heads, 1, 1), float(np.log(GAMMA_INIT))))
        optimizer = torch.optim.Adam([weight, bias] + ([log_gamma] if window > 0 else []), lr=LEARNING_RATE)
        generator = torch.Generator().manual_seed(seed)

        def features(x):
            u = torch.matmul(x, weight) + bias
            return torch.cat([torch.softmax(u, dim=-1), torch.softmax(-u, dim=-1)], dim=-1)

        def loss_of(index):
            num = torch.matmul(features(qt[index]), features(kt[index]).transpose(-1, -2))
            if key_log is not None:
                num = num * torch.exp(key_log[index])
            if mask is not None:
                num = num * mask
            if window > 0:  # LoLCATs' hybrid: γ-weighted window softmax + the maps outside the window
                num = hybrid_weights_torch(torch, logits[index], num, log_gamma, window)
            log_lin = torch.log(num.clamp_min(1e-30)) - torch.log(num.sum(-1, keepdim=True))
            cross = -(target[index] * torch.where(target[index] > 0, log_lin, torch.zeros(()))).sum(-1)
            return cross.mean(), cross.mean(dim=(1, 2))

        everything = torch.arange(samples)
        with torch.no_grad():
            loss_start = float(loss_of(everything)[0])
        done, stopped_by = 0, "steps"
        for _ in range(steps):
            index = torch.randperm(samples, generator=generator)[:per_step] if per_step < samples else everything
            optimizer.zero_grad()
            loss, _ = loss_of(index)
            loss.backward()
            optimizer.step()
            done += 1
            if time.perf_counter() - start > seconds and done < steps:
                stopped_by = "seconds"
                break
        with torch.no_grad():
            loss_end, per_sample = loss_of(everything)
        w = weight.detach().numpy().astype(np.float32).copy()
        b = bias.detach().numpy()[:, 0, :].astype(np.float32).copy()
        mean_entropy = float(entropy.mean())
    if info is not None:
        info.update(steps=done, stopped_by=stopped_by, seconds=round(time.perf_counter() - start, 3),
                    samples_per_step=per_step, loss_start=loss_start, loss_end=float(loss_end),
                    kl_start=loss_start - mean_entropy, kl_end=float(loss_end) - mean_entropy)
        if window > 0:
            info["gamma"] = [round(float(g), 6) for g in log_gamma.detach().exp().reshape(-1)]
    return w, b


def _key_rows(mask, batch: int, sk: int) -> np.ndarray | None:
    """A captured additive mask (broadcastable to [batch, H, Sq, Sk], the same for every query) as
    [batch, Sk]: its first query row; None when it has per-head rows or does not broadcast."""
    m = np.asarray(mask, np.float32)
    if m.ndim >= 2:
        m = m[..., :1, :]
    rows = m.reshape(-1, m.shape[-1]) if m.ndim else m.reshape(1, 1)
    if rows.shape[0] not in (1, batch) or rows.shape[1] not in (1, sk):
        return None
    return np.ascontiguousarray(np.broadcast_to(rows, (batch, sk)))


def fit_model_maps(model: ir.Model, samples, *, steps: int = 200, seconds: float = 60.0, seed: int = 0,
                   pass_name: str = "linear-attention", window: int = 0,
                   fit=None) -> dict[str, tuple[np.ndarray, np.ndarray, dict]]:
    """Hedgehog maps for every canonical attention of ``model``'s main graph, fitted on ``samples``.

    Captures each ``DotProductAttention``'s Q, K (and a mask that is not a constant) in one
    calibration run (``graphopt.calibrate``), then fits one map per node. Returns, keyed by the
    node's output name (the linear-attention rule's ``out.name``): ``(w, b, info)``; a node that
    cannot be fitted is left out, with ``info``-style reasons under the key ``"!" + name``
    (``{"declined": reason}``). ``seconds`` is the budget of the whole model, split evenly.
    ``window``: fit for LoLCATs' hybrid (``fit_hedgehog``'s; γ in ``info["gamma"]``). ``fit``: another
    fitting function with ``fit_hedgehog``'s keywords (``passes/_window_fit.fit_gamma``: γ alone, for a
    fixed map), returning (w, b) or (None, None).
    """
    from graphopt import calibrate  # noqa: PLC0415
    from graphopt.passes._canonical_utils import constant  # noqa: PLC0415

    nodes = [n for n in model.graph if n.domain == "pkg.graphopt" and n.op_type == "DotProductAttention"]
    wanted = []
    for node in nodes:
        q, k = node.inputs[0], node.inputs[1]
        mask = node.inputs[3] if len(node.inputs) > 3 else None
        wanted += [q.name, k.name] + ([mask.name] if mask is not None and constant(mask) is None else [])
    if not nodes:
        return {}
    captured = calibrate.calibrate(model, samples, dict.fromkeys(wanted), pass_name=pass_name).arrays
    out: dict = {}
    budget = seconds / len(nodes)
    for node in nodes:
        site = node.outputs[0].name
        q_list, k_list = captured.get(node.inputs[0].name), captured.get(node.inputs[1].name)
        if not q_list or not k_list:
            out["!" + site] = {"declined": "Q or K was not captured (no inferred type)"}
            continue
        try:
            q, k = np.concatenate([_heads(a) for a in q_list]), np.concatenate([_heads(a) for a in k_list])
        except ValueError as e:
            out["!" + site] = {"declined": f"the samples' Q or K differ in shape or rank ({e})"}
            continue
        if q.shape[1] != k.shape[1] or q.shape[-1] != k.shape[-1]:
            out["!" + site] = {"declined": f"Q {q.shape[1:]} and K {k.shape[1:]} differ in heads or head dimension"}
            continue
        attrs = node.attributes
        scale, causal = attrs.get_float("scale", 1.0), bool(attrs.get_int("causal", 0))
        key_mask = None
        mask = node.inputs[3] if len(node.inputs) > 3 else None
        if mask is not None:
            array = constant(mask)
            masks = [array] * len(q_list) if array is not None else captured.get(mask.name)
            if not masks:
                out["!" + site] = {"declined": f"the mask {mask.name} was not captured"}
                continue
            rows = [_key_rows(m, len(_heads(a)), k.shape[2]) for m, a in zip(masks, q_list)]
            if any(r is None for r in rows):
                out["!" + site] = {"declined": f"the mask {mask.name} is not one row of key weights per sample"}
                continue
            key_mask = np.concatenate(rows)
        if causal and q.shape[2] != k.shape[2]:
            out["!" + site] = {"declined": f"causal with Sq {q.shape[2]} != Sk {k.shape[2]}"}
            continue
        info: dict = {}
        w, b = (fit or fit_hedgehog)(q, k, scale=scale, causal=causal, steps=steps, seconds=budget, seed=seed,
                                     key_mask=key_mask, info=info, window=window)
        out[site] = (w, b, info)
    return out


# --- ONNX: the map as ops in a rewrite ------------------------------------------------------------------


def hedgehog_features(op, x: ir.Value, w, b, dtype: ir.DataType | None = None) -> ir.Value:
    """φ(x) = Concat(Softmax(x·W + b), Softmax(-(x·W + b))) on the last axis, built with ``op``.

    ``w`` [H, D, D] and ``b`` are numpy arrays as ``fit_hedgehog`` returns them (b [H, D]; made
    ``Constant`` nodes of ``dtype``, default x's dtype or float32) or ir.Values the pass made
    (initializers: w [H, D, D], b reshaped to [H, 1, D]); x [.., H, S, D], axis -3 the heads."""
    if not isinstance(w, ir.Value) or not isinstance(b, ir.Value):
        numpy_dtype = (dtype or x.dtype or ir.DataType.FLOAT).numpy()
        if not isinstance(w, ir.Value):
            w = op.Constant(value=ir.tensor(np.asarray(w).astype(numpy_dtype)))
        if not isinstance(b, ir.Value):
            b_array = np.asarray(b)
            b = op.Constant(value=ir.tensor(b_array.reshape(b_array.shape[0], 1, b_array.shape[-1]).astype(numpy_dtype)))
    u = op.Add(op.MatMul(x, w), b)
    return op.Concat(op.Softmax(u, axis=-1), op.Softmax(op.Neg(u), axis=-1), axis=-1)
