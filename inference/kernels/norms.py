"""The language model's RMSNorms computed by one PyTorch call each, where transformers' take about seven.

transformers' ``Phi3RMSNorm`` casts to float32, squares, averages, adds epsilon, takes the inverse root,
multiplies, casts back and scales by its weight: one small kernel each on a GPU, twice a layer, so
~450 launches in a decoding step of the real model, most of a batch-1 step's small-kernel time
(bench/RESULTS.md). :class:`FusedRMSNorm` hands the normalisation to ``torch.nn.functional.rms_norm``
(one fused kernel on CUDA since PyTorch 2.8, computed in float32 and rounded once, as transformers
rounds) and keeps transformers' last step, the weight applied in the input's dtype, so its output is
the same: bit for bit on the CPU (tested); on a GPU the runner's start-up check
(:func:`check_fused_norm`, below) compares the two before the fused one is used.

Each norm is replaced by a new module of the wanted kind that holds the same weight (the same parameter
object, under the same name), so checkpoints, the 8-bit layers and the parameter count see no difference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.models.phi3.modeling_phi3 import Phi3RMSNorm

from inference.kernels.checks import TOLERANCE, disagreement, reason_unless_fatal
from inference.kernels.replace import replace_modules

NORM_ROWS = (1, 33, 2048)  # checked at start-up: a decoding row, a batch, a prompt chunk


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


@torch.inference_mode()
def check_fused_norm(device: torch.device, dtype: torch.dtype, hidden_size: int, eps: float) -> str | None:
    """:class:`FusedRMSNorm` against transformers' ``Phi3RMSNorm`` with the same
    weight, on rows whose sizes range as a residual stream's do; None when every element agrees within the
    dtype's tolerance, else what differed (then the runner keeps transformers' norms)."""
    generator = torch.Generator().manual_seed(0)
    fused = FusedRMSNorm(hidden_size, eps)
    fused.weight.copy_(1 + 0.2 * torch.randn(hidden_size, generator=generator))
    fused.to(device, dtype)
    plain = Phi3RMSNorm(hidden_size, eps).to(device, dtype)
    plain.weight.copy_(fused.weight)
    tolerance = TOLERANCE.get(dtype, 1e-2)
    try:
        for rows in NORM_ROWS:
            scales = torch.rand(rows, 1, generator=generator) * 60 + 0.01
            hidden = (torch.randn(rows, hidden_size, generator=generator) * scales).to(device, dtype)
            why = disagreement(fused(hidden), plain(hidden).float(), tolerance, "transformers' RMSNorm")
            if why is not None:
                return f"{why} ({rows} rows)"
    except Exception as error:
        return reason_unless_fatal(error, "The fused RMSNorm")
    return None
