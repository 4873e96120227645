"""The language model's RMSNorms computed by one PyTorch call each, where transformers' take about seven.

transformers' ``Phi3RMSNorm`` casts to float32, squares, averages, adds epsilon, takes the inverse root,
multiplies, casts back and scales by its weight: one small kernel each on a GPU, twice a layer, so
~450 launches in a decoding step of the real model, most of a batch-1 step's small-kernel time
(bench/RESULTS.md). :class:`FusedRMSNorm` hands the normalisation to ``torch.nn.functional.rms_norm``
(one fused kernel on CUDA since PyTorch 2.8, computed in float32 and rounded once, as transformers
rounds) and keeps transformers' last step, the weight applied in the input's dtype, so its output is
the same: bit for bit on the CPU (tested); on a GPU the runner's start-up check
(:func:`inference.kernels.checks.check_fused_norm`) compares the two before the fused one is used.

Each norm is replaced by a new module of the wanted kind that holds the same weight (the same parameter
object, under the same name), so checkpoints, the 8-bit layers and the parameter count see no difference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.models.phi3.modeling_phi3 import Phi3RMSNorm

from inference.kernels.replace import replace_modules


class FusedRMSNorm(Phi3RMSNorm):
    """``Phi3RMSNorm`` normalising in one ``rms_norm`` call, then applying its weight as transformers does."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        normalized = F.rms_norm(hidden_states, self.weight.shape, eps=self.variance_epsilon)
        return self.weight * normalized


def use_fused_norms(model: torch.nn.Module, fused: bool) -> int:
    """Make every RMSNorm of ``model`` fused (or transformers' own again); returns how many there are."""
    return replace_modules(model, Phi3RMSNorm, FusedRMSNorm if fused else Phi3RMSNorm, _sharing_weight)


def _sharing_weight(kind: type[Phi3RMSNorm], norm: Phi3RMSNorm) -> Phi3RMSNorm:
    """A ``kind`` norm with ``norm``'s epsilon and its very weight (made on the meta device)."""
    with torch.device("meta"):
        replacement = kind(norm.weight.shape[0], eps=norm.variance_epsilon)
    replacement.weight = norm.weight
    return replacement.train(norm.training)
