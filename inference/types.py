"""Plain data passed between the bot and the engine (no torch, no Discord)."""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from PIL import Image


DEFAULT_MODEL_ID = "microsoft/Phi-3-vision-128k-instruct"
DEFAULT_REQUEST_TIMEOUT_S = 180.0  # a request's time limit, waiting included, where the model is fast
TYPICAL_ANSWER_TOKENS = 100  # the answer estimates of time speak of
MAX_NEW_TOKENS_LIMIT = 4096  # the longest answer any front end (bot settings, command line) may ask for
# Bytes of the published checkpoints' weights (bf16), from their model.safetensors.index.json.
PUBLISHED_WEIGHT_BYTES = {
    "microsoft/Phi-3-vision-128k-instruct": 8_293_242_880,
    "microsoft/Phi-3.5-vision-instruct": 8_293_242_880,
}


class Task(enum.StrEnum):
    DESCRIBE = "describe"
    OCR = "ocr"
    COMPARE = "compare"
    ALT_TEXT = "alt_text"  # a short description for people who cannot see the image


class Media(enum.StrEnum):
    """What a request's pictures are: separate pictures, pages of one document, or frames of one animation
    or video in order (their labels name the pages or the times)."""

    PICTURES = "pictures"
    PAGES = "pages"
    FRAMES = "frames"


class Priority(enum.IntEnum):
    """Who is waiting for an answer; lower goes first."""

    PEOPLE = 0  # someone asked and is waiting
    BACKGROUND = 1  # nobody asked (automatic alt text): only when no person is waiting


class Place:
    """One place in an engine's line, held from before its request exists: while the request's pictures
    download and decode, so that a full line refuses at once and nothing is fetched or decoded for a
    request that could not wait. Handed to ``stream`` or ``generate``, the request takes it over; it is given
    back once the request is queued, or on leaving its ``with`` block, whichever comes first (a second give
    back does nothing)."""

    def __init__(self, priority: Priority, give_back: Callable[[Priority], None]) -> None:
        self.priority = priority
        self._give_back = give_back
        self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            self._give_back(self.priority)

    def __enter__(self) -> Place:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def group_share(line_limit: int) -> int:
    """The places of a line one server may hold: half, and at least one (both engines keep to it)."""
    return max(1, line_limit // 2)


class PlacesHeld:
    """The places an engine has handed out and not yet taken back, per class of request and server (the
    engine decides when its line is full; this only counts)."""

    def __init__(self) -> None:
        self._held: Counter[tuple[Priority, int | None]] = Counter()

    def count(self, priority: Priority) -> int:
        return sum(held for (kind, _), held in self._held.items() if kind is priority)

    def count_for(self, priority: Priority, group_id: int | None) -> int:
        return self._held[(priority, group_id)]

    def take(self, priority: Priority, group_id: int | None = None) -> Place:
        self._held[(priority, group_id)] += 1
        return Place(priority, lambda kind: self._give_back(kind, group_id))

    def _give_back(self, priority: Priority, group_id: int | None) -> None:
        self._held[(priority, group_id)] -= 1
        if not self._held[(priority, group_id)]:
            del self._held[(priority, group_id)]


@dataclass(frozen=True)
class Turn:
    """An earlier exchange of a conversation: what the person asked and what the model answered.

    ``question`` of the first turn may be ``None`` (the task's own instruction was asked); later
    turns are follow-up questions.
    """

    question: str | None
    answer: str


@dataclass(frozen=True)
class Request:
    """One question about one or more images.

    ``images`` are decoded RGB PIL images (the caller has already applied EXIF
    orientation and flattened transparency). ``user_id`` lets the scheduler be
    fair between people; ``max_new_tokens`` of ``None`` means the engine default.
    ``timeout_s`` shortens the engine's own time limit for this request (waiting and
    answering), e.g. so that an answer still arrives while the asker can be shown it.
    ``history`` makes this a follow-up: the earlier turns of the conversation, oldest first
    (the images belong to the first); ``question`` is then the new question. A conversation too long
    for the model's memory loses its oldest follow-up exchanges (never the images); the engine tells
    ``on_trimmed`` how many.
    """

    task: Task
    images: tuple[Image.Image, ...]
    question: str | None = None
    max_new_tokens: int | None = None
    user_id: int | None = None
    timeout_s: float | None = None
    history: tuple[Turn, ...] = ()
    markdown: bool = False  # OCR: the text as Markdown (tables, headings, lists)
    priority: Priority = Priority.PEOPLE
    group_id: int | None = None  # the server it was asked in (None: a DM): servers take turns, as people do
    media: Media = Media.PICTURES  # pages of a document or frames of a video: said to the model
    labels: tuple[str, ...] = ()  # each picture's page or time ("page 2", "1.5 s"), with PAGES or FRAMES
    num_crops: int | None = None  # crops to read each picture at (frames read fewer); None: the engine's
    language: str | None = None  # the language to answer in, named in English ("Vietnamese"); None: English

    def time_limit(self, engine_limit_s: float) -> float:
        """Seconds this request may take: the engine's limit, or less if the request asks for less."""
        if self.timeout_s is None:
            return engine_limit_s
        return max(0.0, min(engine_limit_s, self.timeout_s))


@dataclass(frozen=True)
class Result:
    text: str
    new_tokens: int
    seconds: float


@dataclass
class EngineStats:
    """Running totals and the current load of an engine, for the owner's view (plain numbers, no library)."""

    waiting: int = 0  # requests in line now
    running: int = 0  # requests being answered now (the batch)
    tokens_generated: int = 0
    answers_finished: int = 0
    out_of_memory: int = 0  # requests that failed for lack of GPU memory
    step_failures: int = 0  # model steps that raised
    dead: bool = False  # the engine gave up on the model
    hardware: str | None = None  # e.g. "cuda:0, bfloat16, sdpa attention"
    memory_bytes: int | None = None  # accelerator memory in use, where it can be known
    prompt_tokens_reused: int = 0  # prompt tokens taken from kept KV-cache blocks instead of computed


@dataclass(frozen=True)
class EngineConfig:
    """How to load and run the model. Defaults run the real published model."""

    model_id: str = DEFAULT_MODEL_ID
    device: str = "auto"  # auto | cuda | cuda:N | mps | cpu
    dtype: str = "auto"  # auto | bfloat16 | float16 | float32
    quantization: str = "auto"  # auto (8bit on a CPU, none elsewhere) | none | 4bit | 8bit
    attn_implementation: str = "auto"  # auto | flash_attention_2 | sdpa | eager
    num_crops: int | None = None  # None: the checkpoint's preprocessor_config value
    max_new_tokens: int = 512
    max_images: int = 4
    request_timeout_s: float | None = None  # None: auto (DEFAULT_REQUEST_TIMEOUT_S, longer on a slow CPU)
    max_queued: int = 32  # requests waiting for a slot; more are refused at once as "busy"
    max_batch_size: int = 8  # sequences decoded together
    # KV-cache tokens (prompt + answer) the running batch may reserve; None: sized at start-up from what
    # memory is left after the weights (gpu_memory_fraction of a GPU; a share of free RAM on the CPU)
    token_budget: int | None = None
    gpu_memory_fraction: float = 0.9  # with token_budget None: the share of the GPU the process may fill
    batch_window_ms: float = 15.0  # how long an idle engine waits for a burst still being prepared
    prefill_chunk_tokens: int = 2048  # prompt tokens prefilled per step beside the running answers
    cuda_graphs: bool = True  # on CUDA: decoding steps replayed from graphs captured and checked at start-up
    # Checked at start-up against transformers' own; off, transformers' (the benchmarks compare):
    fused_norms: bool = True  # RMSNorm in one call each
    fused_rope: bool = True  # rotary embedding and KV write in one Triton kernel a layer (where Triton runs)


@runtime_checkable
class Engine(Protocol):
    """What the bot needs from an inference backend: all of it, so the bot never probes for a part."""

    # Why the engine gave up on its model for good (None while it serves), and whom it tells, once, on the
    # event loop. A remote engine never gives up: its server's failures fail one request at a time.
    dead_reason: str | None
    on_dead: Callable[[str], None] | None

    def stats(self) -> EngineStats | None:
        """The owner's figures, or None for an engine that keeps none (a remote server keeps its own)."""

    async def start(self) -> None:
        """Load the model (may take minutes); raise ``EngineUnavailable`` on failure."""

    async def stop(self) -> None:
        """Cancel or finish in-flight work and release the model."""

    @property
    def picture_crops(self) -> int | None:
        """The crops the model reads of each picture, or None where the engine cannot tell (a model server
        picks its own): intake reduces a picture to exactly that canvas (``inference.images``)."""
        ...

    def hold_place(self, priority: Priority = Priority.PEOPLE, group_id: int | None = None) -> Place:
        """A place in line for a request about to be made, before its pictures are downloaded: raises
        ``EngineBusy`` at once when the line is full, or when the server ``group_id`` already holds its share
        of it (half), so that others always find room (and what ``stream`` raises for an engine that is not
        serving). Give it to ``stream`` or ``generate``; hold it in a ``with`` block."""
        ...

    def stream(
        self,
        request: Request,
        on_position: Callable[[int], None] | None = None,
        on_trimmed: Callable[[int], None] | None = None,
        *,
        place: Place | None = None,
    ) -> AsyncIterator[str]:
        """Yield the answer as text pieces as they are generated.

        ``on_position(n)`` is called whenever the request's place in line changes
        (n >= 1 while waiting, 0 once it is being answered). ``on_trimmed(n)`` is called
        before the first piece when ``n`` old exchanges of a conversation were left out
        to fit the model's memory. Closing the iterator
        (or cancelling the task consuming it) stops the generation at the next
        decoding step. ``place`` is one held by :meth:`hold_place`; without one the request takes its own
        (``EngineBusy`` when the line is full).
        """
        ...

    async def generate(self, request: Request, *, place: Place | None = None) -> Result:
        """Run the request to the end and return the whole answer (``place`` as for :meth:`stream`)."""
        ...

    def wait_s(self, position: int) -> float | None:
        """Roughly how many seconds the request at ``position`` in line (1 = next) waits before its answer
        starts, or None when the engine cannot tell."""
        ...
