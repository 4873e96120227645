"""The paged runner (``KV_CACHE=paged``; ``auto`` picks it on NVIDIA GPUs): one KV cache, allocated once.

    start-up   weights ──► PagedStorage (TOKEN_BUDGET tokens + one partial block per row, in blocks)
    join       BlockPool.reserve(prompt + answer tokens) ──► the row's block table; nothing else moves
    each step  one packed forward pass: a token for every answering row
               + up to PREFILL_CHUNK_TOKENS of newcomers' prompts (images encoded once, before their
                 first chunk) ──► paged attention writes each new key in its slot, reads each row's blocks
    leave      BlockPool.release: the blocks are free for the next request

A running answer therefore waits at most one chunk and one step while newcomers arrive, and a join or
a leave copies nothing. The tensors of a step that only decodes live at fixed addresses (the block
table is rewritten in place only when the batch changes), which CUDA graphs need (issue 10).
LongRoPE stays exact: the scheduler never mixes requests of different rope regimes, and a chunk of a
prompt past the switch is told to use the long factors, as the whole prompt would (docs/kv-cache.md).
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass

import torch

from inference.block_pool import BLOCK_TOKENS, BlockPool
from inference.decode_step import DecodeInputs, DecodeRow, DecodeStep
from inference.errors import EngineUnavailable, OutOfMemory
from inference.loading import LoadedModel
from inference.paged_cache import (
    ATTENTION_NAME,
    GIB,
    PagedBatch,
    PagedStorage,
    block_table_tensor,
    choose_kernel,
    slots_of,
)
from inference.runner import (
    OOM_NEW_TEXT,
    OOM_RUNNING_TEXT,
    Event,
    IncrementalDecoder,
    Prepared,
    RunnerBase,
    _Row,
    use_language_attention,
)
from inference.types import EngineConfig

log = logging.getLogger(__name__)

# GPU memory left free beside the cache, for a prefill chunk's activations and the vision tower.
ACTIVATION_HEADROOM = 2 * GIB
MIN_TOKEN_BUDGET = 1024  # the smallest TOKEN_BUDGET the settings accept


KERNEL_TEXT = {
    "fused": "PyTorch's FlashAttention, reading the blocks in place",
    "triton": "a Triton kernel reading the blocks in place (prompt chunks: gathered row by row)",
    "plain": "gathered row by row (no in-place kernel for this device and dtype)",
}


class CacheDoesNotFit(EngineUnavailable):
    """The KV cache asked for by the settings is larger than the free GPU memory."""


@dataclass
class _PagedRow(_Row):
    """A request in the batch. ``next_position`` counts the tokens it has in the cache."""

    table: tuple[int, ...] = ()  # its blocks, in token order
    prompt: Prepared | None = None  # until the whole prompt is in the cache
    embeds: torch.Tensor | None = None  # the prompt's embeddings (images included) while it is prefilled
    long_rope: bool = False  # its prompt is past LongRoPE's switch: every pass uses the long factors

    @property
    def prefilling(self) -> bool:
        return self.prompt is not None


@dataclass(frozen=True)
class _Entry:
    """One row's part of a packed pass: ``count`` new tokens at positions ``start`` onwards."""

    row: _PagedRow
    start: int
    count: int
    emits: bool  # the logits of its last token give the row its next token


class PagedRunner(RunnerBase):
    def __init__(self, loaded: LoadedModel, config: EngineConfig):
        super().__init__(loaded, config)
        model_config = loaded.model.config
        self.block_tokens = BLOCK_TOKENS
        # One request may reserve the whole budget; the pool adds one partial block per row.
        self.blocks_per_row = -(-config.token_budget // self.block_tokens)
        num_blocks = self.blocks_per_row + config.max_batch_size
        heads = model_config.num_attention_heads
        self.kv_heads = model_config.num_key_value_heads or heads
        self.head_dim = getattr(model_config, "head_dim", None) or model_config.hidden_size // heads
        self.num_layers = model_config.num_hidden_layers
        # One block more than the pool hands out: the scratch block that padding rows of a step use.
        self.storage = self._allocate(num_blocks + 1)
        self.pool = BlockPool(num_blocks, self.block_tokens)
        self.kernel = kernel_for(loaded)
        self.sliding_window = getattr(model_config, "sliding_window", None)
        self.rows: dict[int, _PagedRow] = {}  # in order of admission
        self.decode_inputs = DecodeInputs(
            config.max_batch_size, self.blocks_per_row, num_blocks, self.block_tokens, loaded.device
        )
        use_language_attention(loaded.model, ATTENTION_NAME)
        self.decode_step = DecodeStep(
            loaded.model,
            self.storage,
            self.decode_inputs,
            self.kernel,
            self.sliding_window,
            self.blocks_per_row * self.block_tokens,
        )
        log.info(
            "KV cache: %.1f GiB allocated once, %d blocks of %d tokens (TOKEN_BUDGET=%d, MAX_BATCH_SIZE=%d); "
            "prompts prefilled %d tokens per step (PREFILL_CHUNK_TOKENS); attention: %s",
            self.cache_bytes / GIB,
            num_blocks,
            self.block_tokens,
            config.token_budget,
            config.max_batch_size,
            config.prefill_chunk_tokens,
            KERNEL_TEXT[self.kernel],
        )
        if config.cuda_graphs and loaded.device.type == "cuda":
            with torch.inference_mode():
                problem = self.decode_step.capture(config.max_batch_size)
            if problem is not None:
                log.warning("CUDA graphs are off, decoding steps run eagerly: %s", problem)

    @property
    def attention_text(self) -> str:
        """How the model attends, for the owner's status (e.g. paged KV cache, triton kernel, CUDA graphs)."""
        graphs = ", CUDA graphs" if self.decode_step.graphs else ""
        return f"paged KV cache, {self.kernel} attention kernel{graphs}"

    # -- start-up ------------------------------------------------------------------------------
    @property
    def bytes_per_token(self) -> int:
        return PagedStorage.bytes_per_token(self.num_layers, self.kv_heads, self.head_dim, self.loaded.dtype)

    @property
    def cache_bytes(self) -> int:
        return (self.pool.num_blocks + 1) * self.block_tokens * self.bytes_per_token

    def _allocate(self, num_blocks: int) -> PagedStorage:
        """The storage, or :class:`CacheDoesNotFit` with the TOKEN_BUDGET that would fit."""
        needed = num_blocks * self.block_tokens * self.bytes_per_token
        free = free_device_memory(self.loaded.device)
        if free is not None and needed + ACTIVATION_HEADROOM > free:
            raise CacheDoesNotFit(self._does_not_fit_text(needed, free))
        try:
            return PagedStorage(
                num_layers=self.num_layers,
                num_blocks=num_blocks,
                block_tokens=self.block_tokens,
                kv_heads=self.kv_heads,
                head_dim=self.head_dim,
                dtype=self.loaded.dtype,
                device=self.loaded.device,
            )
        except torch.OutOfMemoryError:
            self._free_memory()
            free = free_device_memory(self.loaded.device) or 0
            raise CacheDoesNotFit(self._does_not_fit_text(needed, free)) from None

    def _does_not_fit_text(self, needed: int, free: int) -> str:
        usable = max(free - ACTIVATION_HEADROOM, 0)
        extra = (self.config.max_batch_size + 1) * self.block_tokens  # partial blocks and the scratch block
        fits = (usable // self.bytes_per_token - extra) // self.block_tokens * self.block_tokens
        head = (
            f"The KV cache for TOKEN_BUDGET={self.config.token_budget} and MAX_BATCH_SIZE="
            f"{self.config.max_batch_size} needs {needed / GIB:.1f} GiB, but {free / GIB:.1f} GiB of GPU "
            f"memory is free after the weights ({ACTIVATION_HEADROOM / GIB:.0f} GiB of it is kept for "
            "activations)"
        )
        if fits >= MIN_TOKEN_BUDGET:
            return f"{head}: set TOKEN_BUDGET to at most {fits}."
        return f"{head}: use QUANTIZATION=4bit, a smaller NUM_CROPS or a larger GPU."

    # -- the batch -----------------------------------------------------------------------------
    @property
    def running_ids(self) -> list[int]:
        return list(self.rows)

    def reset(self) -> None:
        for request_id in list(self.rows):
            self._leave(request_id)

    def _join(self, request_id: int, prepared: Prepared) -> None:
        # The scheduler keeps every reservation within TOKEN_BUDGET, and the pool holds the budget
        # plus one partial block per row, so this cannot run short (PoolExhausted would be a bug).
        self.pool.reserve(request_id, prepared.prompt_tokens + prepared.max_new_tokens)
        self.rows[request_id] = _PagedRow(
            request_id,
            prepared.max_new_tokens,
            next_position=0,
            decoder=IncrementalDecoder(self.tokenizer),
            table=tuple(self.pool.table(request_id)),
            prompt=prepared,
            long_rope=prepared.prompt_tokens > self.rope_switch,
        )

    def _leave(self, request_id: int) -> None:
        self.rows.pop(request_id, None)
        self.pool.release(request_id)

    def _drop(self, request_ids: set[int]) -> None:
        for request_id in request_ids:
            self._leave(request_id)

    @torch.inference_mode()
    def step(self, admit: list[tuple[int, Prepared]], abort: list[int]) -> list[Event]:
        """Aborted rows leave, admitted ones join; then one pass: every answering row decodes a token,
        and newcomers' prompts advance by up to ``prefill_chunk_tokens`` (a newcomer whose prompt is
        complete gets its first token in the same pass).

        Out of GPU memory in a pass that prefills: the newcomers in it fail, the running answers go on
        (nothing of theirs changed: their new keys are written again next step). In a pass that only
        decodes: every request in it fails and the runner starts clean.
        """
        for request_id in abort:
            self._leave(request_id)
        for request_id, prepared in admit:
            self._join(request_id, prepared)
        if not self.rows:
            return []
        entries = self._plan()
        try:
            return self._run(entries)
        except torch.OutOfMemoryError:
            self._free_memory()
            newcomers = [entry.row for entry in entries if entry.row.prefilling]
            if newcomers:
                for row in newcomers:
                    self._leave(row.request_id)
                return [
                    Event(row.request_id, error=OutOfMemory(OOM_NEW_TEXT), finished=True) for row in newcomers
                ]
            victims = self.running_ids
            self.reset()
            return [Event(rid, error=OutOfMemory(OOM_RUNNING_TEXT), finished=True) for rid in victims]

    def _plan(self) -> list[_Entry]:
        """This pass: one token for every answering row, then prompt chunks in order of admission."""
        entries = [
            _Entry(row, row.next_position, 1, True) for row in self.rows.values() if not row.prefilling
        ]
        budget = self.config.prefill_chunk_tokens
        for row in self.rows.values():
            if budget <= 0:
                break
            if row.prefilling:
                left = row.prompt.prompt_tokens - row.next_position
                count = min(budget, left)
                entries.append(_Entry(row, row.next_position, count, emits=count == left))
                budget -= count
        return entries

    def _run(self, entries: list[_Entry]) -> list[Event]:
        if all(not entry.row.prefilling for entry in entries):  # only decoding: the static step
            tokens = self.decode_step.run([self._decode_row(entry.row) for entry in entries])
        else:
            logits = self.loaded.model(
                use_cache=False,
                long_rope=any(entry.row.long_rope for entry in entries),
                **self._packed_inputs(entries),
            ).logits[0]
            tokens = logits.argmax(-1).tolist()
        for entry in entries:
            entry.row.next_position += entry.count
            if entry.row.prefilling and entry.emits:  # its whole prompt is in the cache now
                entry.row.prompt = entry.row.embeds = None
        return self._accept([entry.row for entry in entries if entry.emits], tokens)

    def _batch(self, entries: list[_Entry], tensors: dict[str, torch.Tensor]) -> PagedBatch:
        return PagedBatch(
            storage=self.storage,
            q_lengths=[entry.count for entry in entries],
            k_lengths=[entry.start + entry.count for entry in entries],
            kernel=self.kernel,
            sliding_window=self.sliding_window,
            **tensors,
        )

    def _decode_row(self, row: _PagedRow) -> DecodeRow:
        position = row.next_position
        slot = slots_of(row.table, position, position + 1, self.block_tokens)[0]
        return DecodeRow(row.request_id, row.last_token, position, slot, row.table)

    def _packed_inputs(self, entries: list[_Entry]) -> dict:
        """Decoding rows and prompt chunks side by side in one sequence (shapes vary: fresh tensors)."""
        device, model = self.loaded.device, self.loaded.model
        pieces = []
        for entry in entries:
            if entry.row.prefilling:
                pieces.append(self._prompt_embeds(entry.row)[entry.start : entry.start + entry.count])
            else:
                token = torch.tensor([entry.row.last_token], device=device)
                pieces.append(model.get_input_embeddings()(token))
        positions = [p for e in entries for p in range(e.start, e.start + e.count)]
        slots = [
            s for e in entries for s in slots_of(e.row.table, e.start, e.start + e.count, self.block_tokens)
        ]
        q_ends = list(itertools.accumulate(entry.count for entry in entries))
        k_lengths = [entry.start + entry.count for entry in entries]
        keep = [end - 1 for end, entry in zip(q_ends, entries) if entry.emits]

        def on_device(values, dtype=torch.int32):
            return torch.tensor(values, dtype=dtype).to(device, non_blocking=True)

        batch = self._batch(
            entries,
            {
                "slots": on_device(slots, torch.long),
                "cu_seq_q": on_device([0, *q_ends]),
                "cu_seq_k": on_device([0, *itertools.accumulate(k_lengths)]),
                "lengths": on_device(k_lengths),
                "block_table": block_table_tensor(
                    [entry.row.table for entry in entries], self.blocks_per_row
                ).to(device, non_blocking=True),
            },
        )
        return {
            "inputs_embeds": torch.cat(pieces)[None],
            "position_ids": on_device([positions], torch.long),
            "logits_to_keep": on_device(keep, torch.long),
            "paged_batch": batch,
        }

    def _prompt_embeds(self, row: _PagedRow) -> torch.Tensor:
        """The prompt's embeddings, images included: the vision tower runs once, before the first chunk."""
        if row.embeds is None:
            prompt, device = row.prompt, self.loaded.device
            pixel_values = image_sizes = None
            if prompt.pixel_values is not None:
                pixel_values = prompt.pixel_values.to(device, self.loaded.dtype)
                image_sizes = prompt.image_sizes.to(device)
            row.embeds = self.loaded.model.model.embed_with_images(
                prompt.input_ids[None].to(device), pixel_values, image_sizes
            )[0]
        return row.embeds


def kernel_for(loaded: LoadedModel) -> str:
    """The paged attention kernel for this model here (:func:`~inference.paged_cache.choose_kernel`)."""
    config = loaded.model.config
    heads = config.num_attention_heads
    return choose_kernel(
        loaded.device,
        loaded.dtype,
        heads,
        config.num_key_value_heads or heads,
        getattr(config, "head_dim", None) or config.hidden_size // heads,
    )


def free_device_memory(device: torch.device) -> int | None:
    """Bytes a new allocation can have on a CUDA device: free on the device, plus what PyTorch holds in its
    cache but no tensor uses (it hands that out first). None elsewhere (no check is made)."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int(free + max(cached, 0))
