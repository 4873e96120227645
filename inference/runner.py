"""The synchronous model runners. One worker thread owns the runner; nothing here is async.

Every runner has two jobs:
- ``prepare(request)``: prompt + image preprocessing on the CPU. Needs only the
  processor, so it may run on another thread while the model works.
- ``step(admit, abort)``: one iteration of continuous batching: aborted rows leave, admitted
  requests join, and the model runs once. Returns what each request gained: a piece of text,
  and whether it has finished.

Two runners share that shape (``KV_CACHE`` picks one, :func:`make_runner`):
- :class:`~inference.paged_runner.PagedRunner` (the default on recent NVIDIA GPUs): a KV cache allocated
  once in blocks, prompts prefilled in chunks beside the running answers (docs/kv-cache.md);
- :class:`ModelRunner` (the default elsewhere): the earlier path. Newly admitted
  requests are prefilled together and merged into the running batch (the KV caches are left-padded
  to a common length and rebuilt), and every running sequence decodes one greedy token.
"""

from __future__ import annotations

import abc
import logging
from dataclasses import dataclass, field

import torch

from inference.errors import OutOfMemory
from inference.kv_cache import GrowingCache, rebuild
from inference.loading import LoadedModel
from inference.prompts import build_prompt, check_image_count, droppable_turns
from inference.text import N_
from inference.types import EngineConfig, Request

log = logging.getLogger(__name__)

# Phi-3 ends an answer with <|end|>; <|endoftext|> also stops it.
STOP_TOKENS = ("<|end|>", "<|endoftext|>")
OOM_NEW_TEXT = N_("The GPU ran out of memory for this request. Try fewer or smaller images.")
OOM_RUNNING_TEXT = N_("The GPU ran out of memory while answering. Please try again.")
# Messages of errors after which CUDA refuses all further work in this process.
FATAL_DEVICE_ERRORS = ("CUDA error", "device-side assert", "illegal memory access", "CUBLAS_STATUS")


@dataclass
class Prepared:
    """A request turned into model inputs (CPU tensors), ready to be prefilled."""

    input_ids: torch.Tensor  # [S]
    pixel_values: torch.Tensor | None  # [N, K, 3, 336, 336]; None for a prompt without images
    image_sizes: torch.Tensor | None  # [N, 2]
    max_new_tokens: int
    left_out: int = 0  # old exchanges of a conversation left out to fit the token budget

    @property
    def prompt_tokens(self) -> int:
        return int(self.input_ids.shape[0])


@dataclass
class Event:
    request_id: int
    text: str = ""
    finished: bool = False
    error: Exception | None = None
    new_tokens: int = 0


class IncrementalDecoder:
    """Token ids in, newly completed text out, decoding only the last few tokens at each push.

    Each push decodes a short window: the tokens already shown by the last piece (kept as
    context, because a tokenizer drops the leading space of a sequence's first token) plus the
    tokens not shown yet; the text past the context's own is new. So the cost per token stays
    flat however long the answer or its current line grows. A half-decoded multi-byte character
    (a trailing U+FFFD) is held back until its last byte arrives.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.context_start = 0  # the window decoded at each push starts here
        self.unread_start = 0  # tokens from here on have not been shown yet

    def push(self, token_id: int | None, final: bool = False) -> str:
        if token_id is not None:
            self.ids.append(token_id)
        context = self._decode(self.context_start, self.unread_start)
        text = self._decode(self.context_start, len(self.ids))
        if (not final and text.endswith("\ufffd")) or len(text) <= len(context):
            return ""
        self.context_start, self.unread_start = self.unread_start, len(self.ids)
        return text[len(context) :]

    def _decode(self, start: int, end: int) -> str:
        if start == end:
            return ""
        return self.tokenizer.decode(self.ids[start:end], skip_special_tokens=True)


@dataclass
class _Row:
    request_id: int
    max_new_tokens: int
    next_position: int
    decoder: IncrementalDecoder
    last_token: int = 0
    generated: int = 0


@dataclass
class _Batch:
    rows: list[_Row] = field(default_factory=list)
    cache: GrowingCache | None = None
    attention_mask: torch.Tensor | None = None  # [B, L]: 0 where a row is left-padded
    padded: bool = False  # some row has padding, so the model needs the mask

    @classmethod
    def of(cls, rows: list[_Row], cache: GrowingCache, attention_mask: torch.Tensor) -> _Batch:
        # Checked once per change of the batch, not per step (it waits for the device).
        return cls(rows, cache, attention_mask, padded=not bool(attention_mask.all()))

    def model_mask(self) -> torch.Tensor | None:
        """The mask to give the model: none when no row is padded (sdpa then needs no mask at all)."""
        return self.attention_mask if self.padded else None


def _left_pad(tensor: torch.Tensor, length: int, dim: int, value: int = 0) -> torch.Tensor:
    missing = length - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_full(shape, value), tensor], dim=dim)


def _cache_tensors(cache: GrowingCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


class RunnerBase(abc.ABC):
    """What every runner shares: preparing requests, and turning new tokens into text and events."""

    def __init__(self, loaded: LoadedModel, config: EngineConfig):
        self.loaded = loaded
        self.config = config
        tokenizer = loaded.processor.tokenizer
        self.tokenizer = tokenizer
        self.stop_ids = {tokenizer.convert_tokens_to_ids(t) for t in STOP_TOKENS}
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    # -- requests ------------------------------------------------------------------------------
    @property
    def rope_switch(self) -> int:
        return int(self.loaded.model.config.original_max_position_embeddings)

    def validate(self, request: Request) -> None:
        check_image_count(len(request.images), self.config.max_images)

    def max_new_tokens(self, request: Request) -> int:
        asked = request.max_new_tokens or self.config.max_new_tokens
        return max(1, min(asked, self.config.max_new_tokens))

    def prepare(self, request: Request) -> Prepared:
        """Turn a request into model inputs; a conversation too long for the budget loses old exchanges.

        The oldest follow-up exchanges go first (the first one, with the images, always stays); if
        even that does not fit, the scheduler refuses the request as too large.
        """
        self.validate(request)
        max_new_tokens = self.max_new_tokens(request)

        def prompt(left_out: int) -> str:
            return build_prompt(
                request.task,
                len(request.images),
                request.question,
                request.history,
                markdown=request.markdown,
                left_out=left_out,
            )

        left_out, text = 0, prompt(0)
        inputs = self.loaded.processor(text=text, images=list(request.images), return_tensors="pt")
        total = int(inputs["input_ids"].shape[1])
        if total + max_new_tokens > self.config.token_budget and request.history:
            # The images add the same tokens whatever the text, so only the text is counted again.
            image_tokens = total - self._text_tokens(text)
            for left_out in range(1, droppable_turns(request.history) + 1):
                text = prompt(left_out)
                if image_tokens + self._text_tokens(text) + max_new_tokens <= self.config.token_budget:
                    break
            inputs = self.loaded.processor(text=text, images=list(request.images), return_tensors="pt")
        return Prepared(
            input_ids=inputs["input_ids"][0],
            pixel_values=inputs["pixel_values"],
            image_sizes=inputs["image_sizes"],
            max_new_tokens=max_new_tokens,
            left_out=left_out,
        )

    def _text_tokens(self, prompt: str) -> int:
        return len(self.loaded.processor.tokenizer(prompt)["input_ids"])

    @staticmethod
    def is_fatal(error: BaseException) -> bool:
        """True for an error after which the device cannot be trusted (a CUDA error poisons the context)."""
        accelerator_error = getattr(torch, "AcceleratorError", None)
        if accelerator_error is not None and isinstance(error, accelerator_error):
            return True
        text = str(error)
        return isinstance(error, RuntimeError) and any(mark in text for mark in FATAL_DEVICE_ERRORS)

    def _free_memory(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _accept(self, rows: list[_Row], tokens: list[int]) -> list[Event]:
        """Record one new token per row; finished rows leave the batch (:meth:`_drop`)."""
        events, done = [], set()
        for row, token in zip(rows, tokens):
            stop = token in self.stop_ids
            if not stop:
                row.generated += 1
            finished = stop or row.generated >= row.max_new_tokens
            piece = row.decoder.push(None if stop else token, final=finished)
            row.last_token = token
            events.append(Event(row.request_id, piece, finished, new_tokens=row.generated))
            if finished:
                done.add(row.request_id)
        if done:
            self._drop(done)
        return events

    @abc.abstractmethod
    def _drop(self, request_ids: set[int]) -> None:
        """Take these requests out of the batch and free what they hold."""


class ModelRunner(RunnerBase):
    """The growing-cache runner (``KV_CACHE=growing``): prefill together, merge by rebuilding the cache."""

    def __init__(self, loaded: LoadedModel, config: EngineConfig):
        super().__init__(loaded, config)
        use_language_attention(loaded.model, loaded.attn_implementation)
        self.batch = _Batch()

    @property
    def attention_text(self) -> str:
        """How the model attends, for the owner's status: e.g. ``sdpa attention``."""
        return f"{self.loaded.attn_implementation} attention"

    @property
    def running_ids(self) -> list[int]:
        return [row.request_id for row in self.batch.rows]

    def reset(self) -> None:
        self.batch = _Batch()

    @torch.inference_mode()
    def step(self, admit: list[tuple[int, Prepared]], abort: list[int]) -> list[Event]:
        """Drop aborted rows; then prefill the admitted requests, or decode one token for every row.

        Out of GPU memory: if only the newcomers' prefill failed, only they get the error;
        if the running batch was touched (its cache half-rebuilt or half-extended), every
        request in it ends with the error too, and the runner starts clean.
        """
        alive = [rid for rid in self.running_ids if rid not in set(abort)]
        admitted = [rid for rid, _ in admit]
        try:
            if abort:
                self._drop(set(abort))
            if admit:  # prefill only: the newcomers' first tokens go out now, not after a decode step
                return self._prefill(admit)
            return self._decode() if self.batch.rows else []
        except torch.OutOfMemoryError:
            self._free_memory()
            if admit and self.running_ids == alive:
                return [Event(rid, error=OutOfMemory(OOM_NEW_TEXT), finished=True) for rid in admitted]
            self.reset()
            victims = alive + admitted
            return [Event(rid, error=OutOfMemory(OOM_RUNNING_TEXT), finished=True) for rid in victims]

    def _prefill(self, admit: list[tuple[int, Prepared]]) -> list[Event]:
        device, model = self.loaded.device, self.loaded.model
        longest = max(p.prompt_tokens for _, p in admit)
        ids = torch.stack([_left_pad(p.input_ids, longest, 0, self.pad_id) for _, p in admit])
        mask = torch.stack(
            [_left_pad(torch.ones(p.prompt_tokens, dtype=torch.long), longest, 0) for _, p in admit]
        )
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = GrowingCache()
        logits = model(
            input_ids=ids.to(device),
            attention_mask=mask.to(device) if not mask.all() else None,
            position_ids=positions.to(device),
            pixel_values=torch.cat([p.pixel_values for _, p in admit]).to(device, self.loaded.dtype),
            image_sizes=torch.cat([p.image_sizes for _, p in admit]).to(device),
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        ).logits[:, -1]
        rows = [
            _Row(rid, p.max_new_tokens, p.prompt_tokens, IncrementalDecoder(self.tokenizer))
            for rid, p in admit
        ]
        self._merge(rows, cache, mask.to(device))
        return self._accept(rows, logits.argmax(-1).tolist())

    def _merge(self, rows: list[_Row], cache: GrowingCache, mask: torch.Tensor) -> None:
        batch = self.batch
        if not batch.rows:
            self.batch = _Batch.of(rows, cache, mask)
            return
        length = max(batch.attention_mask.shape[1], mask.shape[1])
        newcomers = _cache_tensors(cache)

        def merge_layer(index: int, keys: torch.Tensor, values: torch.Tensor):
            new_keys, new_values = newcomers[index]
            return (
                torch.cat([_left_pad(keys, length, 2), _left_pad(new_keys, length, 2)]),
                torch.cat([_left_pad(values, length, 2), _left_pad(new_values, length, 2)]),
            )

        self.batch = _Batch()  # while the cache is rebuilt the old batch is not usable
        self.batch = _Batch.of(
            batch.rows + rows,
            rebuild(batch.cache, merge_layer),
            torch.cat([_left_pad(batch.attention_mask, length, 1), _left_pad(mask, length, 1)]),
        )

    def _drop(self, request_ids: set[int]) -> None:
        keep = [i for i, row in enumerate(self.batch.rows) if row.request_id not in request_ids]
        if len(keep) == len(self.batch.rows):
            return
        if not keep:
            self.reset()
            return
        index = torch.tensor(keep, device=self.batch.attention_mask.device)
        mask = self.batch.attention_mask.index_select(0, index)
        # Columns that are padding for every remaining row can go (frees cache memory).
        first = int(mask.any(0).nonzero()[0])

        def keep_rows(_: int, keys: torch.Tensor, values: torch.Tensor):
            return keys.index_select(0, index)[:, :, first:], values.index_select(0, index)[:, :, first:]

        rows, cache = [self.batch.rows[i] for i in keep], self.batch.cache
        self.batch = _Batch()
        self.batch = _Batch.of(rows, rebuild(cache, keep_rows), mask[:, first:])

    def _decode(self) -> list[Event]:
        batch, device = self.batch, self.loaded.device
        ids = torch.tensor([[row.last_token] for row in batch.rows], device=device)
        positions = torch.tensor([[row.next_position] for row in batch.rows], device=device)
        batch.attention_mask = torch.cat(
            [batch.attention_mask, batch.attention_mask.new_ones(len(batch.rows), 1)], dim=1
        )
        logits = self.loaded.model(
            input_ids=ids,
            attention_mask=batch.model_mask(),
            position_ids=positions,
            cache=batch.cache,
            use_cache=True,
        ).logits[:, -1]
        for row in batch.rows:
            row.next_position += 1
        return self._accept(batch.rows, logits.argmax(-1).tolist())


def use_language_attention(model, name: str) -> None:
    """The language model attends with ``name`` (each runner sets its own); the vision tower keeps its."""
    if model.config._attn_implementation == name:
        return
    tower = model.model.vision_embed_tokens.img_processor
    tower_attention = tower.config._attn_implementation
    model.set_attn_implementation({"": name, "vision_config": tower_attention})
    tower.set_attn_implementation(tower_attention)


def make_runner(loaded: LoadedModel, config: EngineConfig) -> RunnerBase:
    """The runner ``config.kv_cache`` names: ``paged``, ``growing``, or ``auto`` (the default): paged where
    an attention kernel reads its blocks in place (CUDA: PyTorch's FlashAttention or our Triton kernel,
    each checked at start-up), growing elsewhere, where the paged cache's plain kernel would copy the
    keys it reads at every layer of every step."""
    from inference.paged_runner import PagedRunner, kernel_for

    kv_cache = config.kv_cache
    if kv_cache == "auto":
        kv_cache = "paged" if kernel_for(loaded) != "plain" else "growing"
        log.info(
            "KV_CACHE=auto: the %s KV cache on %s (%s)",
            kv_cache,
            loaded.device,
            str(loaded.dtype).removeprefix("torch."),
        )
    if kv_cache == "growing":
        return ModelRunner(loaded, config)
    return PagedRunner(loaded, config)
