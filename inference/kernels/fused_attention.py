"""The language model's attention in the runner's packed passes, with the rotary embedding and the KV
write in one Triton kernel (:mod:`inference.kernels.triton_rope`) instead of transformers' dozen small ones.

:class:`FusedRopeAttention` is transformers' ``Phi3Attention`` (the same projections, under the same names)
whose forward, given the runner's ``paged_batch``, projects ``qkv``, hands it to the kernel, and attends with
:func:`inference.kernels.paged_cache.attend` as :func:`~inference.kernels.paged_cache.paged_attention` would;
anything else (``generate``, a partial rotary embedding) goes to transformers' own forward. The runner puts
it in place of each attention layer (:func:`use_fused_rope`) only where Triton runs and after
:func:`inference.kernels.checks.check_fused_rope` found the kernel equal to transformers' rotary embedding
and the cache's own write.
"""

from __future__ import annotations

from typing import cast

import torch
from transformers.models.phi3.modeling_phi3 import Phi3Attention

from inference.kernels.paged_cache import PagedBatch, attend
from inference.kernels.replace import replace_modules


def rope_and_write(*args) -> torch.Tensor:
    """:func:`inference.kernels.triton_rope.rope_and_write`, imported when first used (Triton is not
    everywhere)."""
    from inference.kernels.triton_rope import rope_and_write as kernel

    return kernel(*args)


class FusedRopeAttention(Phi3Attention):
    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch: PagedBatch | None = kwargs.get("paged_batch")
        cos, sin = position_embeddings
        if batch is None or hidden_states.shape[0] != 1 or cos.shape[-1] != self.head_dim:
            return super().forward(hidden_states, position_embeddings, attention_mask, **kwargs)
        tokens = hidden_states.shape[1]
        layer = cast(int, self.layer_idx)  # set by the decoder layer that holds it
        keys, values = batch.storage.keys[layer], batch.storage.values[layer]
        queries = rope_and_write(
            self.qkv_proj(hidden_states)[0],
            cos[0],
            sin[0],
            batch.slots,
            keys,
            values,
            self.config.num_attention_heads,
        )
        out = attend(queries, keys, values, batch, self.scaling)  # [tokens, heads, head_dim]
        return self.o_proj(out.reshape(1, tokens, -1)), None


def use_fused_rope(model: torch.nn.Module, fused: bool) -> int:
    """Make every Phi-3 attention of ``model`` fused (or transformers' own again); returns how many."""
    return replace_modules(model, Phi3Attention, FusedRopeAttention if fused else Phi3Attention, _taking_over)


def _taking_over(kind: type[Phi3Attention], attention: Phi3Attention) -> Phi3Attention:
    """A ``kind`` attention layer with ``attention``'s projections themselves (their weights, 8-bit layers
    included): built on the meta device, so nothing is allocated twice."""
    with torch.device("meta"):
        replacement = kind(attention.config, attention.layer_idx)
    replacement.qkv_proj = attention.qkv_proj
    replacement.o_proj = attention.o_proj
    for key, value in vars(attention).items():  # what loading marked on it (transformers' initialised flag)
        vars(replacement).setdefault(key, value)
    return replacement.train(attention.training)
