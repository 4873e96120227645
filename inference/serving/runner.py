"""The synchronous model runner, the same on every device. One worker thread owns it; nothing here is async.

    built      from what the start decided on the device (startup.py: kernels and fused parts checked, the
               cache sized, graphs captured): the KV cache allocated once, in blocks
    join       BlockPool.reserve(prompt + answer tokens) ──► the row's block table; nothing else moves
    each step  one packed forward pass: a token for every answering row
               + up to PREFILL_CHUNK_TOKENS of newcomers' prompts (images encoded once, before their
                 first chunk) ──► paged attention writes each new key in its slot, reads each row's blocks
    leave      BlockPool.release: the blocks are free for the next request

A running answer therefore waits at most one chunk and one step while newcomers arrive, and a join or
a leave copies nothing. The tensors of a step that only decodes live at fixed addresses (the block
table is rewritten in place only when the batch changes), which CUDA graphs need (decode_step.py).
LongRoPE stays exact: the scheduler never mixes requests of different rope regimes, and a chunk of a
prompt past the switch is told to use the long factors, as the whole prompt would (docs/kv-cache.md).
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass

import torch

from inference.decoding import STOP_TOKENS, Event, IncrementalDecoder
from inference.errors import OutOfMemory
from inference.kernels.attention_backends import BackendChoice
from inference.kernels.checks import is_fatal
from inference.kernels.fused_attention import use_fused_rope
from inference.kernels.norms import use_fused_norms
from inference.kernels.paged_cache import (
    PagedBatch,
    PagedStorage,
    block_table_tensor,
    register_attention,
    slots_of,
)
from inference.loading import LoadedModel, use_language_attention
from inference.prepare import Prepared, Preparer
from inference.serving.block_pool import BlockPool, block_tokens_for
from inference.serving.cache_size import (
    CacheDoesNotFit,
    CacheShape,
    explicit_budget_problem,
    full_request_tokens,
    gpu_memory_of,
)
from inference.serving.decode_step import DecodeInputs, DecodeRow, DecodeStep
from inference.serving.pace import Pace
from inference.serving.picture_features import PictureFeatures
from inference.serving.prefix_hash import prefix_hashes
from inference.types import EngineConfig, Request

log = logging.getLogger(__name__)


# On a CPU, how long a newcomer's prompt may hold up a running answer in one pass, and the fewest prompt
# tokens a pass reads all the same (fewer would waste the prompt path's matrix products).
ANSWER_PAUSE_S = 3.0
MIN_SHARED_CHUNK = 64


@dataclass(frozen=True)
class Decisions:
    """What the start decided on this device (``inference.serving.startup``), handed to the runner."""

    attention: BackendChoice  # the attention backend, checked against the plain one
    fused_norms: bool  # RMSNorm in one call (checked against transformers')
    fused_rope: bool  # rotary embedding and KV write in one Triton kernel (checked)
    causal_bias: bool  # a prompt's later chunks attend without a mask (checked)
    token_budget: int  # KV-cache tokens
    pace: Pace | None = None  # a CPU's measured speed


@dataclass
class _Row:
    """A request in the batch. ``next_position`` counts the tokens it has in the cache."""

    request_id: int
    max_new_tokens: int
    next_position: int
    decoder: IncrementalDecoder
    table: tuple[int, ...] = ()  # its blocks, in token order
    prompt: Prepared | None = None  # until the whole prompt is in the cache
    embeds: torch.Tensor | None = None  # the prompt's embeddings (images included) while it is prefilled
    long_rope: bool = False  # its prompt is past LongRoPE's switch: every pass uses the long factors
    prefix_hashes: tuple[bytes, ...] = ()  # its prompt's full blocks' names (prefix_hash.py)
    kept: int = 0  # its first blocks that are kept for reuse (taken as kept, or kept once written)
    last_token: int = 0
    generated: int = 0

    @property
    def prefilling(self) -> bool:
        return self.prompt is not None


@dataclass(frozen=True)
class _Entry:
    """One row's part of a packed pass: ``count`` new tokens at positions ``start`` onwards."""

    row: _Row
    start: int
    count: int
    emits: bool  # the logits of its last token give the row its next token


class ModelRunner:
    """``prepare(request)`` turns a request into tensors (any thread); ``step(admit, abort)`` runs one
    iteration of continuous batching on the model thread and returns what each request gained."""

    is_fatal = staticmethod(is_fatal)

    def __init__(self, loaded: LoadedModel, config: EngineConfig, decisions: Decisions):
        """A runner on ``loaded``'s device, as ``decisions`` say (``inference.serving.startup`` makes them,
        checking each fast path on the device first): its model's attention set up, its KV cache allocated.
        Nothing is checked, measured or run here."""
        self.loaded = loaded
        self.config = config
        tokenizer = loaded.processor.tokenizer
        self.tokenizer = tokenizer
        self.stop_ids = {tokenizer.convert_tokens_to_ids(t) for t in STOP_TOKENS}
        model_config = loaded.model.config
        heads = model_config.num_attention_heads
        self.kv_heads = model_config.num_key_value_heads or heads
        self.head_dim = getattr(model_config, "head_dim", None) or model_config.hidden_size // heads
        self.num_layers = model_config.num_hidden_layers
        self.sliding_window = getattr(model_config, "sliding_window", None)
        self.block_tokens = block_tokens_for(loaded.device.type)
        self.attention_choice = decisions.attention
        self.attention = self.attention_choice.backend
        self.fused_norms = decisions.fused_norms
        self.fused_rope = decisions.fused_rope
        self.causal_bias = decisions.causal_bias
        self.pace: Pace | None = decisions.pace  # measured on a CPU, where limits and waits depend on it
        use_fused_norms(loaded.model, self.fused_norms)
        use_fused_rope(loaded.model, self.fused_rope)
        use_language_attention(loaded.model, register_attention())
        self.rows: dict[int, _Row] = {}  # in order of admission
        self.full_request_tokens = full_request_tokens(self.num_crops, config.max_new_tokens)
        self.token_budget = decisions.token_budget
        self.preparer = Preparer(loaded.processor, config, self.token_budget, self.block_tokens)
        self.pictures = PictureFeatures(loaded.model, loaded.device, loaded.dtype)
        self._allocate_cache(self.token_budget)
        self.graphs_checked = False  # decoding steps replay CUDA graphs that passed their check
        self.graphs_refused = False  # graphs were captured but failed their check: decoding is eager

    # -- requests (any thread) -----------------------------------------------------------------
    @property
    def num_crops(self) -> int:
        """The most crops a picture is read at (the checkpoint's, ``NUM_CROPS``, or fewer on a slow CPU)."""
        return int(self.loaded.processor.image_processor.num_crops)

    @property
    def rope_switch(self) -> int:
        return int(self.loaded.model.config.original_max_position_embeddings)

    def validate(self, request: Request) -> None:
        self.preparer.validate(request)

    def prepare(self, request: Request) -> Prepared:
        return self.preparer.prepare(request)

    # -- start-up ------------------------------------------------------------------------------
    @property
    def cache_shape(self) -> CacheShape:
        bytes_per_token = PagedStorage.bytes_per_token(
            self.num_layers, self.kv_heads, self.head_dim, self.loaded.dtype
        )
        return CacheShape(bytes_per_token, self.block_tokens)

    @property
    def cache_bytes(self) -> int:
        return (self.pool.num_blocks + 1) * self.block_tokens * self.cache_shape.bytes_per_token

    @property
    def people(self) -> int:
        """Full requests (an image at the most crops, the longest answer) the cache holds at once."""
        # Requests hold whole blocks.
        full = self.pool.blocks_for(self.full_request_tokens) * self.block_tokens
        return min(self.token_budget // full, self.config.max_batch_size)

    @property
    def hardware_text(self) -> str:
        dtype = str(self.loaded.dtype).removeprefix("torch.")
        return f"{self.loaded.device}, {dtype}, {self.attention_text}"

    @property
    def reused_tokens(self) -> int:
        return self.pool.hits * self.block_tokens

    def memory_bytes(self) -> int | None:
        if self.loaded.device.type != "cuda":
            return None
        return int(torch.cuda.memory_allocated(self.loaded.device))

    @property
    def attention_text(self) -> str:
        """How the model attends, for the owner's status."""
        measured = self.attention_choice.time_ms
        timing = f" ({measured:.2f} ms)" if measured is not None else ""
        graphs = ", CUDA graphs (checked)" if self.graphs_checked else ""
        if self.graphs_refused:
            graphs = ", CUDA graphs off (they failed their start-up check)"
        fused = [part for part, on in (("RMSNorm", self.fused_norms), ("rotary", self.fused_rope)) if on]
        fusions = f", fused {' and '.join(fused)} (checked)" if fused else ""
        return (
            f"paged KV cache of {self.token_budget} tokens (room for {self.people}), "
            f"{self.attention.name} attention kernel{timing}{fusions}{graphs}"
        )

    def _allocate_cache(self, token_budget: int) -> None:
        """The storage, its pool and the decoding step's buffers for ``token_budget`` tokens."""
        # One request may reserve the whole budget; reservations are whole blocks (the scheduler rounds up).
        self.blocks_per_row = -(-token_budget // self.block_tokens)
        num_blocks = self.blocks_per_row
        # One block more than the pool hands out: the scratch block that padding rows of a step use.
        self.storage = self._new_storage(num_blocks + 1)
        self.pool = BlockPool(num_blocks, self.block_tokens)
        self.decode_inputs = DecodeInputs(
            self.config.max_batch_size, self.blocks_per_row, num_blocks, self.block_tokens, self.loaded.device
        )
        self.decode_step = DecodeStep(
            self.loaded.model,
            self.storage,
            self.decode_inputs,
            self.attention,
            self.sliding_window,
            self.blocks_per_row * self.block_tokens,
        )

    def _new_storage(self, num_blocks: int) -> PagedStorage:
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
            memory = gpu_memory_of(self.loaded.device)
            free = memory.free_and_total()[0] if memory is not None else 0
            budget = self.config.token_budget or num_blocks * self.block_tokens
            problem = explicit_budget_problem(self.cache_shape, budget, free)
            raise CacheDoesNotFit(problem or "The KV cache could not be allocated: out of memory.") from None

    def prefill_alone(self, prepared: Prepared, tokens: int) -> None:
        """One forward pass of the first ``tokens`` of ``prepared``'s prompt into the cache, nothing kept: the
        start's warm-up measures what it takes (the cache holds ``tokens`` here)."""
        row = _Row(
            0,
            1,
            next_position=0,
            decoder=IncrementalDecoder(self.tokenizer),
            table=tuple(range(self.blocks_per_row)),
            prompt=prepared,
        )
        with torch.inference_mode():
            self.loaded.model(use_cache=False, **self._packed_inputs([_Entry(row, 0, tokens, emits=True)]))
        self.pictures.clear()

    def _free_memory(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # -- the batch -----------------------------------------------------------------------------
    @property
    def running_ids(self) -> list[int]:
        return list(self.rows)

    def reset(self) -> None:
        for request_id in list(self.rows):
            self._leave(request_id)

    def _join(self, request_id: int, prepared: Prepared) -> None:
        """The request takes its blocks: first those of its prompt's leading blocks that are kept (their keys
        and values are in the cache already: it starts after them), then new ones for the rest."""
        long_rope = prepared.prompt_tokens > self.rope_switch
        ids = prepared.input_ids.tolist()
        names = prefix_hashes(
            ids,
            prepared.picture_spans,
            prepared.picture_hashes,
            self.block_tokens,
            long_rope=long_rope,
        )
        reusable = (prepared.prompt_tokens - 1) // self.block_tokens  # its last token is computed: its logits
        # The scheduler keeps the reservations, rounded up to whole blocks, within the budget, and the pool
        # holds the budget's blocks, so this cannot run short (PoolExhausted would be a bug).
        reused = self.pool.reserve_reusing(
            request_id, prepared.prompt_tokens + prepared.max_new_tokens, names[:reusable]
        )
        self.rows[request_id] = _Row(
            request_id,
            prepared.max_new_tokens,
            next_position=reused * self.block_tokens,
            decoder=IncrementalDecoder(self.tokenizer),
            table=tuple(self.pool.table(request_id)),
            prompt=prepared,
            long_rope=long_rope,
            prefix_hashes=tuple(names),
            kept=reused,
        )

    def _leave(self, request_id: int) -> None:
        self.rows.pop(request_id, None)
        self.pool.release(request_id)

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
                    Event(row.request_id, error=OutOfMemory(while_answering=False), finished=True)
                    for row in newcomers
                ]
            victims = self.running_ids
            self.reset()
            return [Event(rid, error=OutOfMemory(while_answering=True), finished=True) for rid in victims]

    def _plan(self) -> list[_Entry]:
        """This pass: one token for every answering row, then prompt chunks in order of admission."""
        entries = [
            _Entry(row, row.next_position, 1, True) for row in self.rows.values() if not row.prefilling
        ]
        budget = self.prompt_tokens_per_pass(answering=bool(entries))
        for row in self.rows.values():
            if budget <= 0:
                break
            if row.prefilling:
                assert row.prompt is not None  # kept until the prompt is in
                left = row.prompt.prompt_tokens - row.next_position
                count = min(budget, left)
                entries.append(_Entry(row, row.next_position, count, emits=count == left))
                budget -= count
        return entries

    def prompt_tokens_per_pass(self, answering: bool) -> int:
        """Prompt tokens read in one pass: ``prefill_chunk_tokens``; on a CPU while others are answering, as
        many as its measured pace reads in :data:`ANSWER_PAUSE_S`, so that a newcomer's prompt pauses a
        running answer only that long between two of its tokens (at least :data:`MIN_SHARED_CHUNK`)."""
        full = self.config.prefill_chunk_tokens
        if not answering or self.pace is None or self.pace.prompt_token_s <= 0:
            return full
        return max(min(MIN_SHARED_CHUNK, full), min(full, int(ANSWER_PAUSE_S / self.pace.prompt_token_s)))

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
            row = entry.row
            row.next_position += entry.count
            if row.prefilling:
                self._keep_written_blocks(row)
                if entry.emits:  # its whole prompt is in the cache now
                    row.prompt = row.embeds = None
        return self._accept([entry.row for entry in entries if entry.emits], tokens)

    def _keep_written_blocks(self, row: _Row) -> None:
        """The prompt's full blocks written so far are kept for reuse (other rows only read them)."""
        written = min(row.next_position // self.block_tokens, len(row.prefix_hashes))
        for index in range(row.kept, written):
            self.pool.keep(row.request_id, index, row.prefix_hashes[index])
        row.kept = max(row.kept, written)

    def _accept(self, rows: list[_Row], tokens: list[int]) -> list[Event]:
        """Record one new token per row; finished rows leave the batch."""
        events = []
        for row, token in zip(rows, tokens):
            stop = token in self.stop_ids
            if not stop:
                row.generated += 1
            finished = stop or row.generated >= row.max_new_tokens
            piece = row.decoder.push(None if stop else token, final=finished)
            row.last_token = token
            events.append(Event(row.request_id, piece, finished, new_tokens=row.generated))
            if finished:
                self._leave(row.request_id)
        return events

    def _decode_row(self, row: _Row) -> DecodeRow:
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

        batch = PagedBatch(
            storage=self.storage,
            slots=on_device(slots, torch.long),
            cu_seq_q=on_device([0, *q_ends]),
            cu_seq_k=on_device([0, *itertools.accumulate(k_lengths)]),
            lengths=on_device(k_lengths),
            block_table=block_table_tensor([entry.row.table for entry in entries], self.blocks_per_row).to(
                device, non_blocking=True
            ),
            q_lengths=[entry.count for entry in entries],
            k_lengths=k_lengths,
            backend=self.attention,
            sliding_window=self.sliding_window,
            causal_bias=self.causal_bias,
        )
        return {
            "inputs_embeds": torch.cat(pieces)[None],
            "position_ids": on_device([positions], torch.long),
            "logits_to_keep": on_device(keep, torch.long),
            "paged_batch": batch,
        }

    def _prompt_embeds(self, row: _Row) -> torch.Tensor:
        """The prompt's embeddings from where its computing starts, pictures included, made once before its
        first chunk (a picture inside the reused blocks is not read; one read lately is not read again)."""
        if row.embeds is None:
            assert row.prompt is not None  # kept until the prompt is in
            row.embeds = self.pictures.prompt_embeds(row.prompt, from_position=row.next_position)
        return row.embeds
