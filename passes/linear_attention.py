"""Linear attention: every canonical softmax attention becomes kernelized attention with a feature map.

    DotProductAttention(Q, K, V, mask, scale, causal)
      ==>  Qf = φ(Q), Kf = φ(K) [· exp(mask_j)]                      (ONNX ops, passes/_feature_maps.py)
           LinearizedAttention(Qf, Kf, V, decay=1, causal)           (pkg.graphopt, graphopt/ops/linear_attention.py)

φ is the ``feature_map`` option: ``elu`` (elu+1), ``relu``, ``cosformer`` (ReLU with cos/sin position
re-weighting), ``performer`` (positive orthogonal random features, ``features`` of them, 0 for
d·ln d, seeded by ``seed``), ``liger`` (softmax over the head dimension; no parameters) or
``hedgehog`` (fitted maps; see below). How the attention's scale enters is in
``passes/_feature_maps.py`` (``fold_scale``). ``causal=auto`` keeps the node's own causal flag;
``always`` / ``never`` override it (for a decoder whose causal mask the canonicalizer could not
prove constant; ``always`` also takes a runtime mask that may differ between queries to be that
causal mask and drops it: stdlib-llama's prefill). Each new node carries its choices (``FEATURE_MAP_KEY``, ``CHOICES_KEY``: map,
causal, scale handling, mask handling, features, seed, chunk) and the attention it replaced
(``SITE_KEY``: the original output's name) in its metadata.

float16/bfloat16 attention: the feature maps run in the model's type, the op in float32 between
Casts (its sums over keys would overflow float16 within a few thousand tokens), output rounded once.

Masks: a constant all-zero mask is no mask. A mask that is the same for every query (a key-padding
mask: BERT/MiniLM's attention_mask, even when exporters expand it to [B, 1, Sq, Sk] — proved by
following it back through elementwise ops to values whose query axis is 1 or constant rows) is
honored exactly: key j is weighted by exp(mask_j), so padded keys (-inf or a large negative) drop
out of numerator and denominator alike. A KV-cache decode step (Sq = 1 over past + current keys,
not causal) becomes the non-causal form over the cache: for that one query it is exactly the causal
linear attention of the prefill, at a cost linear in the context per step; the constant-time
recurrent-state form (state inputs/outputs instead of the cache) is ``linear-attention-state``, run after this.

Declined, with the reason: the model's opset is below 15; the scores are softcapped (tanh has no
feature-map factorization); a non-positive scale with a map that folds it; a mask that depends on
the query (a causal or sliding-window mask given at run time, a relative-position bias): linear
attention cannot factor it into the keys; an unknown mask rank; a non-float Q; ``performer`` with
an unknown head dimension or inside a function (its W is an initializer); ``hedgehog`` where no map was fitted
(the reason from ``passes/_hedgehog.fit_model_maps``: Q or K not captured, heads differ, a per-head mask).

``window=W > 0``: LoLCATs' hybrid, ``WindowedLinearAttention`` (softmax over the W nearest keys,
the map outside, a fitted per-head γ): ``passes/_window.py`` (its rewrite, declines and fit).

Hedgehog: the pass calibrates (``needs_calibration`` for this map and for window > 0): one run captures every
attention's Q, K (and mask), ``passes/_hedgehog.py`` fits a map per attention by attention
distillation (``hedgehog_steps`` Adam steps at most, ``hedgehog_seconds`` for the whole model,
``seed``), and φ(x) = [softmax(xW+b), softmax(-(xW+b))] is built on the raw Q and K (W absorbs
the scale; ``fold_scale`` does not apply).

Why: softmax attention costs O(N²) in time and memory; linear attention computes Kfᵀ·V once,
O(N·F·D), so long sequences (and decode with a state) get cheap. The price is accuracy: a model
trained with softmax loses quality without fine-tuning (or fitted maps, Hedgehog/LoLCATs), and the
report says how much (per-block output cosine vs softmax).
"""

from __future__ import annotations

import dataclasses
import json
import typing

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from graphopt import ops
from graphopt.ops.linear_attention import CHOICES_KEY, FEATURE_MAP_KEY, MIN_OPSET, OP_NAME, SITE_KEY
from graphopt.pass_base import RulePass
from graphopt.passes import _attention_masks as key_masks
from graphopt.passes import _window
from graphopt.passes._canonical_utils import FLOAT_TYPES, check_opset, default_opset, unique_initializer_name
from graphopt.passes._feature_maps import HOMOGENEOUS, MapPlan, build_features, default_features, performer_weights, weigh_keys
from graphopt.passes._hedgehog import fit_model_maps, hedgehog_features
from graphopt.registry import check_options, register_pass

__all__ = ["LinearAttentionOptions", "LinearAttentionPass"]


@dataclasses.dataclass(frozen=True)
class LinearAttentionOptions:
    feature_map: typing.Literal["elu", "relu", "cosformer", "performer", "hedgehog", "liger"] = "elu"
    window: int = dataclasses.field(default=0, metadata={"range": (0, 1 << 20)})  # LoLCATs softmax window (hybrid)
    causal: typing.Literal["auto", "always", "never"] = "auto"
    chunk: int = dataclasses.field(default=64, metadata={"range": (1, 1 << 16)})  # causal kernels' block size
    features: int = dataclasses.field(default=0, metadata={"range": (0, 1 << 16)})  # performer: 0 = d·ln d
    seed: int = 0  # performer's random features, hedgehog's fitting
    hedgehog_steps: int = dataclasses.field(default=200, metadata={"range": (1, 1 << 20)})  # Adam steps per attention
    hedgehog_seconds: float = dataclasses.field(default=120.0, metadata={"range": (0.0, 1e6)})  # fitting budget, whole model
    fold_scale: bool = False  # elu, liger: multiply √scale into Q and K before the map (measured worse: docs/linear-attention.md)
    cosformer_length: int = 0  # cosformer's M: 0 = the key length
    eps: float = dataclasses.field(default=1e-6, metadata={"range": (0.0, 1.0)})

    def __post_init__(self) -> None:
        check_options(self)


class _LinearAttention(pattern.RewriteRuleClassBase):
    def __init__(self, name: str, options: LinearAttentionOptions, maps: dict | None = None) -> None:
        super().__init__(name)
        self.options = options
        self.maps = maps or {}  # hedgehog: attention output name -> (w, b, info), "!" + name -> {"declined": why}

    def pattern(self, op, q, k, v, mask):
        return op.DotProductAttention(q, k, v, mask, _domain=ops.DOMAIN, _allow_other_attributes=True, _outputs=["out"])

    def check(self, context, q, k, v, mask, out, **_) -> pattern.MatchResult:
        result, o = pattern.MatchResult(), self.options
        self._plan = None
        node = out.producer()
        if not check_opset(context, result, OP_NAME, MIN_OPSET):
            return result
        if o.feature_map == "hedgehog" and out.name not in self.maps:
            why = self.maps.get("!" + (out.name or ""), {}).get("declined", "no fitted map (the pass fits them on calibration samples)")
            return result.fail(f"hedgehog: {why}", node)
        attrs = node.attributes
        if attrs.get_float("softcap", 0.0) > 0:
            return result.fail("the scores are softcapped (cap·tanh(s/cap)): no feature map factors that", node)
        if (dtype := q.dtype) not in FLOAT_TYPES:
            return result.fail(f"Q's element type is {dtype.name if dtype else 'unknown'}, not float", q)
        scale = attrs.get_float("scale", 1.0)
        folds = o.feature_map == "performer" or (o.fold_scale and o.feature_map not in HOMOGENEOUS | {"hedgehog"})
        if scale <= 0 and (folds or o.feature_map in HOMOGENEOUS):
            return result.fail(f"scale {scale} is not positive: the feature maps approximate exp(scale·q·k) for "
                               "scale > 0 only", node)
        causal = {"auto": attrs.get_int("causal", 0), "always": 1, "never": 0}[o.causal]
        key_mask, mask_rank, why_not = key_masks.key_mask(mask, "linear attention")
        forced_causal = bool(why_not) and o.causal == "always" and key_masks.rank(mask) is not None
        if forced_causal:  # causal=always asserts that the runtime mask is the causal mask: the op applies it
            key_mask, mask_rank, why_not = "none", 0, None
        if why_not:
            return result.fail(why_not, mask)
        if o.window > 0 and (why := _window.decline(o, q, k, attrs.get_float("scale", 1.0), key_mask != "none",
                                                     self.maps.get(out.name, (None, None, None))[2],
                                                     self.maps.get("!" + (out.name or ""), {}).get("declined"))):
            return result.fail(why, node)
        plan = dict(feature_map=o.feature_map, dtype=dtype, opset=default_opset(context.model),
                    scale=scale if folds else None, key_mask=key_mask, mask_rank=mask_rank or 0,
                    cosformer_length=o.cosformer_length)
        choices = {"feature_map": o.feature_map, "causal": causal, "scale": "folded" if folds else (
            "cancels" if o.feature_map in HOMOGENEOUS else "dropped"), "mask": "causal (asserted by causal=always)" if forced_causal else key_mask if key_mask == "none" else "key-padding",
            "chunk": o.chunk, "eps": o.eps}
        if o.feature_map == "performer":
            head_dim = q.shape[-1] if q.shape is not None and len(q.shape) >= 2 else None
            if not isinstance(head_dim, int):
                return result.fail("performer needs Q's head dimension to draw its features; it is unknown", q)
            graph = context.graph_or_function
            if isinstance(graph, ir.Function):
                return result.fail("performer's random features are an initializer, and this attention is inside a "
                                   "function; inline first", node)
            features = o.features or default_features(head_dim)
            site = out.name or node.name or "attention"
            plan.update(features=features, weights=performer_weights(head_dim, features, o.seed, site),
                        weights_name=unique_initializer_name(graph, f"linear_attention_{site}_performer_w"))
            choices.update(features=features, seed=o.seed, orthogonal=True)
        if o.feature_map == "hedgehog":
            info = self.maps[out.name][2]
            choices.update(seed=o.seed, hedgehog_steps=info["steps"], hedgehog_kl=round(info["kl_end"], 5))
        if o.feature_map == "cosformer":
            choices["cosformer_length"] = o.cosformer_length or "key length"
        if o.window > 0:
            choices.update(window=o.window, gamma=self.maps[out.name][2]["gamma"], op="WindowedLinearAttention")
        self._plan, self._scale = (MapPlan(**plan), causal, choices, out.name or ""), scale
        return result

    def rewrite(self, op, q, k, v, mask, **_):
        plan, causal, choices, site = self._plan
        if plan.feature_map == "hedgehog":
            w, b, _ = self.maps[site]
            qf, kf = hedgehog_features(op, q, w, b, plan.dtype), weigh_keys(op, hedgehog_features(op, k, w, b, plan.dtype), mask, plan)
        else:
            qf, kf = build_features(op, q, k, mask, plan)
        narrow = plan.dtype in (ir.DataType.FLOAT16, ir.DataType.BFLOAT16)
        if "window" in choices:
            y = _window.hybrid_attention(op, q, k, v, mask, qf, kf, choices["gamma"], plan=plan, causal=causal,
                                         scale=self._scale, window=choices["window"],
                                         compute=ir.DataType.FLOAT if narrow else plan.dtype)
            return self._stamp(op, y, plan, choices, site, narrow)
        if narrow:  # the sums over keys overflow float16 within a few thousand tokens: the op runs in float32
            qf, kf, v = (op.Cast(x, to=ir.DataType.FLOAT) for x in (qf, kf, v))
        decay = op.Constant(value=ir.tensor(np.ones((), np.float32 if narrow else plan.dtype.numpy())))
        y = op.LinearizedAttention(qf, kf, v, decay, causal=causal, eps=float(choices["eps"]), _domain=ops.DOMAIN)
        return self._stamp(op, y, plan, choices, site, narrow)

    def _stamp(self, op, y, plan, choices, site, narrow):
        node = y.producer()
        node.metadata_props[FEATURE_MAP_KEY] = plan.feature_map
        node.metadata_props[CHOICES_KEY] = json.dumps({**choices, "compute": "float32"} if narrow else choices, sort_keys=True)
        node.metadata_props[SITE_KEY] = site
        return op.Cast(y, to=plan.dtype) if narrow else y


@register_pass("linear-attention", options=LinearAttentionOptions, category="rewrite")
class LinearAttentionPass(RulePass):
    """Replace each softmax DotProductAttention by LinearizedAttention over feature-mapped Q, K (elu, relu, cosformer, performer, liger, hedgehog);
    with window > 0 by LoLCATs' WindowedLinearAttention (softmax window + the map outside, fitted γ)."""

    @property
    def needs_calibration(self) -> bool:  # hedgehog fits its maps, window > 0 its γ, on the run's samples
        return self.options.feature_map == "hedgehog" or self.options.window > 0

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self._maps = {}
        if self.options.window > 0:
            self._maps = _window.fit_windows(model, self.samples, self.options, self.pass_name)
        elif self.options.feature_map == "hedgehog":
            o = self.options
            self._maps = fit_model_maps(model, self.samples, steps=o.hedgehog_steps, seconds=o.hedgehog_seconds,
                                        seed=o.seed, pass_name=self.pass_name)
        return super().call(model)

    def rules(self):
        return [_LinearAttention.rule(f"linear-attention-{self.options.feature_map}", self.options,
                                      getattr(self, "_maps", {}))]

