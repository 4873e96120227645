"""The language model's attention in the runner's packed passes, with the rotary embedding and the KV
write in one Triton kernel (:mod:`inference.kernels.triton_rope`) instead of transformers' dozen small ones.

:class:`FusedRopeAttention` is transformers' ``Phi3Attention`` (the same projections, under the same names)
whose forward, given the runner's ``paged_batch``, projects ``qkv``, hands it to the kernel, and attends with
its batch's attention backend as :func:`~inference.kernels.paged_cache.paged_attention` would;
anything else (``generate``, a partial rotary embedding) goes to transformers' own forward. The runner puts
it in place of each attention layer (:func:`use_fused_rope`) only where Triton runs and after
:func:`check_fused_rope` (below) found the kernel equal to transformers' rotary embedding
and the cache's own write.
"""

from __future__ import annotations

from typing import cast

import torch
from transformers.models.phi3.modeling_phi3 import Phi3Attention, apply_rotary_pos_emb

from inference.kernels.checks import TOLERANCE, disagreement, reason_unless_fatal
from inference.kernels.paged_cache import PagedBatch, PagedStorage
from inference.kernels.replace import replace_modules

ROPE_TOKENS = (1, 33, 700)  # checked at start-up: a decoding row, a batch, a prompt chunk
ROPE_POSITIONS = 8192  # positions drawn below this (past LongRoPE's switch at 4,096)


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
        out = batch.backend.attend(queries, keys, values, batch, self.scaling)  # [tokens, heads, head_dim]
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


@torch.inference_mode()
def check_fused_rope(
    device: torch.device, dtype: torch.dtype, *, heads: int, kv_heads: int, head_dim: int
) -> str | None:
    """:func:`rope_and_write` against transformers'
    ``apply_rotary_pos_emb`` and :meth:`~inference.kernels.paged_cache.PagedStorage.write` on random rows of
    ``qkv`` at random positions: the same queries, and every slot of both caches the same (the right slots
    written, no other); None when all agree within the dtype's tolerance, else what differed (then the runner
    keeps transformers')."""
    generator = torch.Generator().manual_seed(0)
    tolerance = TOLERANCE.get(dtype, 1e-2)
    widths = [heads * head_dim, kv_heads * head_dim, kv_heads * head_dim]
    frequencies = 1 / 10000 ** (torch.arange(0, head_dim, 2).float() / head_dim)
    block_tokens = 16
    try:
        for tokens in ROPE_TOKENS:
            num_blocks = -(-tokens // block_tokens) + 2  # room for slots no token writes
            qkv = (torch.randn(tokens, sum(widths), generator=generator) * 4).to(device, dtype)
            positions = torch.randint(0, ROPE_POSITIONS, (tokens, 1), generator=generator).float()
            angles = torch.cat([positions * frequencies, positions * frequencies], dim=-1)
            cos, sin = angles.cos().to(device, dtype), angles.sin().to(device, dtype)
            slots = torch.randperm(num_blocks * block_tokens, generator=generator)[:tokens].to(device)
            fused, plain = (
                PagedStorage(
                    num_layers=1,
                    num_blocks=num_blocks,
                    block_tokens=block_tokens,
                    kv_heads=kv_heads,
                    head_dim=head_dim,
                    dtype=dtype,
                    device=device,
                )
                for _ in range(2)
            )
            queries = rope_and_write(qkv, cos, sin, slots, fused.keys[0], fused.values[0], heads)
            q, k, v = (part.view(1, tokens, -1, head_dim).transpose(1, 2) for part in qkv.split(widths, -1))
            q, k = apply_rotary_pos_emb(q, k, cos[None], sin[None])
            plain.write(0, slots, k[0].transpose(0, 1), v[0].transpose(0, 1))
            compared = {
                "queries": (queries, q[0].transpose(0, 1)),
                "keys": (fused.keys[0], plain.keys[0]),
                "values": (fused.values[0], plain.values[0]),
            }
            for name, (got, expected) in compared.items():
                why = disagreement(got, expected.float(), tolerance, "transformers'")
                if why is not None:
                    return f"{name}: {why} ({tokens} tokens)"
    except Exception as error:
        return reason_unless_fatal(error, "The fused rotary embedding")
    return None
