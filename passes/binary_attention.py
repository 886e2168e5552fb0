"""Binary-code attention (ShiftAddViT / EcoFormer): Q and K hashed to {0,1} codes, attention as masked additions.

    DotProductAttention(Q, K, V, mask, scale, causal=0)          (K's sequence length Sk static)
      ==>  Cq  = Pack16(Greater(Q·Wq + bq, 0))                   int32 [.., Sq, ceil(F/16)]
           Ckᵀ = Pack16(Transpose(Greater(K·Wk + bk, 0)))        int32 [.., F, ceil(Sk/16)]: a row per bit
           [S | z]     = MaskedAddMatMul<k=Sk>(Ckᵀ, [V·w | w])   [.., F, Dv+1]   (w_j = exp(mask_j), or 1)
           [num | den] = MaskedAddMatMul<k=F>(Cq, [S | z])       [.., Sq, Dv+1]
           Y = num / (den + eps)

    DotProductAttention(.., causal=1), or Sk not static, or ``form=linearized``
      ==>  LinearizedAttention(Cast(Greater(Q·Wq + bq, 0)), Cast(Greater(K·Wk + bk, 0)) [· w], V, decay=1, causal)

Pack16 is MaskedAddMatMul's packing in standard ops (``passes/_binary_codes.py``: Cast to int32,
zero-pad to whole words, Reshape [.., W, 16], times 2^b, ReduceSum), done at run time on the
hashed codes. Either way Y = Cq·(Ckᵀ·V) / (Cq·(Ckᵀ·1) + eps), the same maths: with codes in
{0,1}^nbits no product is left in the attention: Ckᵀ·V is, per bit, the sum of the V rows whose key
has that bit set; Cq·(Ckᵀ·V) is, per query, the sum of the state rows its bits select; the
normalizer is the last column (V's ones column summed the same way). MaskedAddMatMul has native
CPU kernels (``backends/tvm/kernels/masked_add_matmul_fast.py``); a causal attention keeps
LinearizedAttention's causal form (running prefix sums; MaskedAddMatMul sums over every key), and
its choices say why (``why_linearized``). ``similarity=and`` weighs key j for query i by the bits
both codes set; ``hamming`` (features [c, 1−c], F = 2·nbits) by nbits − Hamming distance
(EcoFormer's affinity, flatter but never all-zero).

Codes (Wq, bq, Wk, bk, per head when Q's axis -3 is a static head count, else one set) are fitted
per attention on the Q and K captured over the calibration samples (``passes/_binary_codes.py``:
principal directions with median thresholds, then distillation against the softmax weights with a
sigmoid relaxation annealed to the hard step; torch CPU, seeded, deterministic; at most ``steps``
Adam steps and ``seconds`` per attention; ``max_samples`` calibration samples). ``steps=0`` keeps
the initialization. The node computing the new output (the Div, or the LinearizedAttention) carries
``FEATURE_MAP_KEY`` = ``binary``, its choices (nbits, similarity, causal, mask handling, eps, form;
``CHOICES_KEY``), the fit (``FIT_KEY``:
steps, which candidate was kept, hard-code KL to softmax before and after on the calibration
samples) and the replaced attention's output name (``SITE_KEY``); wall time is in the pass notes
only (outputs stay byte-identical).

Masks as ``linear-attention``: a constant all-zero mask is none; a key-padding mask (the same for
every query) weights key j by exp(mask_j) (0 or 1 for a 0/-inf mask: still a masked addition).

Declined, with the reason: the model's opset is below 15; softcapped scores; a mask that may differ
between queries (causal/window masks given at run time, relative-position bias); an unknown mask
rank; a non-float Q; an attention inside a function (its Q, K cannot be captured; inline first);
Q or K not captured by calibration (no values); K's head count neither 1 nor Q's.

Why: softmax attention costs O(N²) multiply-adds and an exp per score; binary-code attention is
linear in N and adds only (bit-masked sums), the ShiftAddViT recipe for multiplication-free
attention (ShiftAddViT fine-tunes afterwards; here the codes are fitted post-training only, and the
report's attention fidelity says how much the outputs moved). Measured: docs/binary-attention.md,
``bench/binary_attention.py`` (top-1 on the digits ViT, latency of one 12x64 layer against the
softmax DotProductAttention on tvm-llvm and ONNX Runtime).
"""

from __future__ import annotations

import dataclasses
import json
import typing

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from graphopt import ops
from graphopt.calibrate import Scales
from graphopt.ops.linear_attention import CHOICES_KEY, FEATURE_MAP_KEY, MIN_OPSET, OP_NAME, SITE_KEY
from graphopt.pass_base import RulePass
from graphopt.passes import _attention_masks as key_masks
from graphopt.passes._binary_codes import binary_codes, code_bits, fit_binary_codes, pack_last_axis
from graphopt.passes._canonical_utils import FLOAT_TYPES, check_opset
from graphopt.passes._feature_maps import MapPlan, weigh_keys
from graphopt.registry import check_options, register_pass

__all__ = ["FIT_KEY", "BinaryAttentionOptions", "BinaryAttentionPass", "Codes"]

FIT_KEY = "pkg.graphopt.binary_attention.fit"


@dataclasses.dataclass(frozen=True)
class BinaryAttentionOptions:
    nbits: int = dataclasses.field(default=16, metadata={"range": (1, 4096)})  # bits per code
    similarity: typing.Literal["and", "hamming"] = "and"
    steps: int = dataclasses.field(default=500, metadata={"range": (0, 1 << 20)})  # distillation steps (0: init only)
    seconds: float = dataclasses.field(default=60.0, metadata={"range": (0.0, 86400.0)})  # per attention
    seed: int = 0
    max_samples: int = dataclasses.field(default=64, metadata={"range": (1, 1 << 20)})  # calibration samples fitted on
    eps: float = dataclasses.field(default=1e-6, metadata={"range": (0.0, 1.0)})
    # masked-add: packed codes + MaskedAddMatMul where it applies (non-causal, static key length);
    # linearized: float 0/1 codes + LinearizedAttention everywhere (the same maths: the A/B baseline)
    form: typing.Literal["masked-add", "linearized"] = "masked-add"

    def __post_init__(self) -> None:
        check_options(self)


@dataclasses.dataclass(frozen=True)
class Codes:
    """One attention's fitted codes (float32) and the fit's deterministic summary."""

    wq: np.ndarray
    bq: np.ndarray
    wk: np.ndarray
    bk: np.ndarray
    fit: dict


def _head_count(value: ir.Value) -> int | None:
    """The static size of axis -3 (the heads) of a rank >= 4 value, else None (one set of codes)."""
    shape = value.shape
    if shape is None or len(shape) < 4 or not isinstance(shape[-3], int):
        return None
    return shape[-3]


def _mask_allows(mask: ir.Value | None) -> bool:
    """The rule's mask checks, ahead of the fit: no mask, an all-zero constant, or a key-padding mask of known rank."""
    return key_masks.key_mask(mask, "binary-code attention")[2] is None


class _BinaryAttention(pattern.RewriteRuleClassBase):
    def __init__(self, name: str, options: BinaryAttentionOptions, codes: Scales) -> None:
        super().__init__(name)
        self.options, self.codes = options, codes

    def pattern(self, op, q, k, v, mask):
        return op.DotProductAttention(q, k, v, mask, _domain=ops.DOMAIN, _allow_other_attributes=True, _outputs=["out"])

    def check(self, context, q, k, v, mask, out, **_) -> pattern.MatchResult:
        result, o = pattern.MatchResult(), self.options
        self._plan = None
        node = out.producer()
        if not check_opset(context, result, OP_NAME, MIN_OPSET):
            return result
        attrs = node.attributes
        if attrs.get_float("softcap", 0.0) > 0:
            return result.fail("the scores are softcapped (cap·tanh(s/cap)): binary codes are fitted to plain "
                               "softmax attention only", node)
        if (dtype := q.dtype) not in FLOAT_TYPES:
            return result.fail(f"Q's element type is {dtype.name if dtype else 'unknown'}, not float", q)
        if isinstance(context.graph_or_function, ir.Function):
            return result.fail("the attention is inside a function: its Q and K cannot be captured for the "
                               "fit; inline first", node)
        key_mask, mask_rank, why_not = key_masks.key_mask(mask, "binary-code attention")
        if why_not:
            return result.fail(why_not, mask)
        codes = self.codes.get(out.name)
        if codes is None:
            return result.fail(self.codes.reason(out.name), node)
        causal = attrs.get_int("causal", 0)
        choices = {"nbits": o.nbits, "similarity": o.similarity, "causal": causal, "eps": o.eps,
                   "mask": "none" if key_mask == "none" else "key-padding", "per_head": codes.wq.ndim == 3}
        blocker = (_masked_add_blocker(q, k, causal) if o.form == "masked-add"
                   else "form=linearized was asked for")
        if blocker is None:
            choices.update(form="masked-add", keys=k.shape[-2])
        else:
            choices.update(form="linearized", why_linearized=blocker)
        plan = MapPlan(feature_map="binary", dtype=dtype, opset=0, scale=None, key_mask=key_mask,
                       mask_rank=mask_rank or 0)
        self._plan = (plan, codes, causal, choices, out.name or "")
        return result

    def rewrite(self, op, q, k, v, mask, **_):
        plan, codes, causal, choices, site = self._plan
        if choices["form"] == "masked-add":
            y = self._masked_add(op, q, k, v, mask, plan, codes, choices)
        else:
            similarity = self.options.similarity
            qf = binary_codes(op, q, codes.wq, codes.bq, similarity, plan.dtype)
            kf = weigh_keys(op, binary_codes(op, k, codes.wk, codes.bk, similarity, plan.dtype), mask, plan)
            decay = op.Constant(value=ir.tensor(np.ones((), plan.dtype.numpy())))
            y = op.LinearizedAttention(qf, kf, v, decay, causal=causal, eps=float(choices["eps"]), _domain=ops.DOMAIN)
        node = y.producer()
        node.metadata_props[FEATURE_MAP_KEY] = "binary"
        node.metadata_props[CHOICES_KEY] = json.dumps(choices, sort_keys=True)
        node.metadata_props[FIT_KEY] = json.dumps(codes.fit, sort_keys=True)
        node.metadata_props[SITE_KEY] = site
        return y

    def _masked_add(self, op, q, k, v, mask, plan: MapPlan, codes: Codes, choices: dict) -> ir.Value:
        """Packed codes and two MaskedAddMatMul: [S | z] = Ckᵀ·[V·w | w], [num | den] = Cq·[S | z], num / (den + eps)."""
        similarity, dtype = self.options.similarity, plan.dtype
        features, keys = _features(self.options), choices["keys"]
        q_rank = max(len(q.shape), codes.wq.ndim)
        k_rank = max(len(k.shape), codes.wk.ndim)
        cq = pack_last_axis(op, code_bits(op, q, codes.wq, codes.bq, similarity, dtype), features, q_rank)
        key_bits = op.Transpose(code_bits(op, k, codes.wk, codes.bk, similarity, dtype),
                                perm=[*range(k_rank - 2), k_rank - 1, k_rank - 2])
        ckt = pack_last_axis(op, key_bits, keys, k_rank)  # [.., F, ceil(Sk/16)]: a row per bit, a bit per key
        one = op.Constant(value=ir.tensor(np.ones((1, 1), dtype.numpy())))
        weights = weigh_keys(op, one, mask, plan)  # exp(mask_j) [.., Sk, 1], or 1 without a mask
        vw = v if plan.key_mask == "none" else op.Mul(v, weights)
        column = op.Concat(op.Shape(vw, end=-1), op.Constant(value=ir.tensor(np.array([1], np.int64))), axis=0)
        augmented = op.Concat(vw, op.Expand(weights, column), axis=-1)  # [.., Sk, Dv + 1]: the last column sums to z
        state = op.MaskedAddMatMul(ckt, augmented, k=keys, _domain=ops.DOMAIN)  # [.., F, Dv + 1]
        both = op.MaskedAddMatMul(cq, state, k=features, _domain=ops.DOMAIN)  # [.., Sq, Dv + 1]
        last = op.Constant(value=ir.tensor(np.array([-1], np.int64)))  # the last column, and the axis
        end = op.Constant(value=ir.tensor(np.array([np.iinfo(np.int64).max], np.int64)))
        zero = op.Constant(value=ir.tensor(np.array([0], np.int64)))
        numerator = op.Slice(both, zero, last, last)
        denominator = op.Slice(both, last, end, last)
        eps = op.Constant(value=ir.tensor(np.asarray(choices["eps"], dtype.numpy())))
        return op.Div(numerator, op.Add(denominator, eps))


def _features(options: BinaryAttentionOptions) -> int:
    """Features per code: nbits (``and``) or 2·nbits (``hamming``: [c, 1-c])."""
    return options.nbits * (1 if options.similarity == "and" else 2)


def _masked_add_blocker(q: ir.Value, k: ir.Value, causal: int) -> str | None:
    """Why this attention keeps the LinearizedAttention form (float 0/1 codes), or None: MaskedAddMatMul applies."""
    if causal:
        return ("causal: MaskedAddMatMul sums over every key; the prefix (running) sums are LinearizedAttention's "
                "causal form")
    if q.shape is None or k.shape is None:
        return "the rank of Q or K is unknown: the key codes cannot be transposed and packed"
    if len(k.shape) < 2 or not isinstance(k.shape[-2], int):
        return "K's sequence length is not static: MaskedAddMatMul's k (the keys summed) is an attribute"
    return None


@register_pass("binary-attention", options=BinaryAttentionOptions, category="rewrite")
class BinaryAttentionPass(RulePass):
    """Softmax DotProductAttention -> {0,1} codes of Q and K (fitted on calibration data) + LinearizedAttention: masked additions."""

    needs_calibration = True

    def __init__(self, options=None) -> None:
        super().__init__(options)
        self._codes: Scales[Codes] = Scales()

    def rules(self):
        return [_BinaryAttention.rule("binary-attention", self.options, self._codes)]

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Capture Q and K of every attention of the main graph (one calibration run), fit codes per
        attention, then run the rule with them."""
        candidates = [n for n in model.graph if n.op_type == "DotProductAttention" and n.domain == ops.DOMAIN
                      and n.outputs[0].name and n.inputs[0] is not None and n.inputs[1] is not None
                      and n.inputs[0].name and n.inputs[1].name and n.attributes.get_float("softcap", 0.0) <= 0
                      and _mask_allows(n.inputs[3] if len(n.inputs) > 3 else None)]  # no fit for what the rule declines
        found, reasons, seconds = {}, {}, []
        if candidates:
            o = self.options
            names = sorted({n.inputs[i].name for n in candidates for i in (0, 1)})
            samples, self.samples = self.samples, (self.samples or [])[: o.max_samples] or self.samples
            try:
                calibration = self.calibrate(model, names)
            finally:
                self.samples = samples
            for node in candidates:
                key, q, k = node.outputs[0].name, node.inputs[0], node.inputs[1]
                qs, ks = calibration.arrays.get(q.name) or [], calibration.arrays.get(k.name) or []
                if not qs or not ks:
                    reasons[key] = f"no calibration values for Q {q.name} or K {k.name}: cannot fit codes"
                    continue
                heads = _head_count(q)
                try:
                    q_all = np.stack([np.asarray(a, np.float32) for a in qs])
                    k_all = np.stack([np.asarray(a, np.float32) for a in ks])
                except ValueError:  # samples of different shapes: fit on the first sample's shape only
                    q_all = np.asarray(qs[0], np.float32)[None]
                    k_all = np.asarray(ks[0], np.float32)[None]
                if heads is None:  # one set of codes: every leading axis is a sample
                    q_all = q_all.reshape(-1, 1, *q_all.shape[-2:])
                    k_all = k_all.reshape(-1, 1, *k_all.shape[-2:])
                elif k_all.ndim < 4 or k_all.shape[-3] not in (1, heads):
                    reasons[key] = f"K's head axis {k_all.shape[-3] if k_all.ndim >= 4 else None} is neither 1 nor Q's {heads}"
                    continue
                else:
                    k_all = np.broadcast_to(k_all, (*k_all.shape[:-3], heads, *k_all.shape[-2:])).copy()
                info: dict = {}
                causal = bool(node.attributes.get_int("causal", 0))
                wq, bq, wk, bk = fit_binary_codes(q_all, k_all, scale=node.attributes.get_float("scale", 1.0),
                                                  causal=causal, nbits=o.nbits, similarity=o.similarity,
                                                  steps=o.steps, seconds=o.seconds, seed=o.seed, info=info)
                if heads is None:
                    wq, bq, wk, bk = wq[0], bq[0], wk[0], bk[0]
                seconds.append(info["seconds"])
                fit = {"steps": info["steps"], "stopped_by": info["stopped_by"], "kept": info["kept"],
                       "kl_init": round(info["kl_init"], 5), "kl_end": round(info["kl_end"], 5),
                       "samples": int(np.prod(q_all.shape[:-3]))}  # sequences (samples x batch)
                found[key] = Codes(wq, bq, wk, bk, fit)
        self._codes = Scales(found, reasons)
        try:
            result = super().call(model)
        finally:
            self._codes = Scales()
        coded = [json.loads(n.metadata_props[FIT_KEY]) for n in model.graph if FIT_KEY in n.metadata_props]
        if coded:
            kl = [(c["kl_init"], c["kl" + ("_end" if c["kept"] == "fit" else "_init")]) for c in coded]
            self.notes.append(f"{len(coded)} attentions coded ({self.options.nbits} bits, {self.options.similarity}); "
                              f"hard-code KL to softmax on the calibration samples: init mean "
                              f"{np.mean([a for a, _ in kl]):.3f} -> kept mean {np.mean([b for _, b in kl]):.3f}; "
                              f"fit time {sum(seconds):.1f} s (per attention: node metadata {FIT_KEY})")
        return result
