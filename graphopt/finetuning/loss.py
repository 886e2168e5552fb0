"""Distillation losses: the student's outputs against the teacher's (float outputs only; an
integer output carries no gradient and is left to the validation).

- ``distill`` (default): mean squared error of every float output, each divided by the variance
  of the teacher's output over the training data, averaged over outputs: outputs of any scale
  (logits, hidden states, a KV cache) weigh alike, and 1.0 is what predicting the mean would cost.
- ``kl``: for logits, KL(teacher || student) of the softmax over the last axis at
  ``temperature``, times temperature² (Hinton et al.: gradients keep their scale as T changes),
  averaged over rows and outputs.

Per-layer targets (``layers``: student outputs added for blocks a pass replaced, whose teacher
values are in the targets under the same names, ``graphopt.finetuning.layers``) always take the
``distill`` form; their mean is added to the outputs' mean times ``layer_weight``.

With a padding mask input (``mask_input``, e.g. ``attention_mask``), an output whose leading axes
are the mask's shape (a hidden state per token) counts only the positions the mask marks: padding
carries no meaning, and an integer model may differ there freely (the validation skips it too).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from graphopt.errors import UsageError

__all__ = ["LOSSES", "Distillation"]

LOSSES = ("distill", "kl")


class Distillation:
    def __init__(self, kind: str, output_names: Sequence[str], targets: Sequence[Mapping[str, np.ndarray]], temperature: float = 2.0,
                 mask_input: str | None = None, layers: Sequence[str] = (), layer_weight: float = 1.0):
        if kind not in LOSSES:
            raise UsageError(f"unknown loss {kind!r}: valid are {', '.join(LOSSES)}")
        if temperature <= 0:
            raise UsageError(f"the distillation temperature must be positive, got {temperature}")
        self.kind, self.temperature, self.mask_input = kind, temperature, mask_input
        self.layers, self.layer_weight = frozenset(layers), layer_weight
        first = targets[0]
        self.outputs = [i for i, name in enumerate(output_names) if np.asarray(first[name]).dtype.kind == "f"]
        if not self.outputs:
            raise UsageError(f"the model has no float output to distill: its outputs are {list(output_names)}")
        self.names = [output_names[i] for i in self.outputs]
        self.scale = {}
        for name in self.names:  # float64: the variance of a large output must not round away
            flat = np.concatenate([np.asarray(t[name], np.float64).ravel() for t in targets])
            variance = float(flat.var()) if flat.size else 0.0
            self.scale[name] = 1.0 / variance if variance > 0 and np.isfinite(variance) else 1.0

    def __call__(self, outputs: Sequence[torch.Tensor], targets: Mapping[str, torch.Tensor],
                 feeds: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        mask = (feeds or {}).get(self.mask_input) if self.mask_input else None
        terms = {name: self._term(outputs[i].float(), targets[name].float(), name, mask) for i, name in zip(self.outputs, self.names, strict=True)}
        main = [t for name, t in terms.items() if name not in self.layers]
        loss = torch.stack(main).mean() if main else torch.zeros(())
        if self.layers:
            loss = loss + self.layer_weight * torch.stack([terms[name] for name in self.layers]).mean()
        return loss

    def _term(self, student: torch.Tensor, teacher: torch.Tensor, name: str, mask: torch.Tensor | None) -> torch.Tensor:
        if self.kind == "distill" or name in self.layers:
            per_row = torch.mean((student - teacher) ** 2, dim=-1) * self.scale[name] if student.ndim else (student - teacher) ** 2 * self.scale[name]
        else:
            t = self.temperature
            log_p = torch.log_softmax(teacher / t, dim=-1)
            log_q = torch.log_softmax(student / t, dim=-1)
            per_row = torch.sum(log_p.exp() * (log_p - log_q), dim=-1) * t * t
        if mask is not None and per_row.shape == mask.shape:
            weight = (mask != 0).to(per_row.dtype)
            return (per_row * weight).sum() / weight.sum().clamp_min(1.0)
        return per_row.mean()
