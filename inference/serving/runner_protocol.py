"""What the engine asks of a model runner: the one interface between the asyncio front and the model thread.

:class:`inference.serving.runner.ModelRunner` implements it on every device; the engine's tests script their
own runners against it, without a model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from inference.decoding import Event
    from inference.prepare import Prepared
    from inference.serving.pace import Pace
    from inference.types import Request


class Runner(Protocol):
    """What the engine asks of the model runner. Only the model thread calls ``step`` and ``reset``;
    ``validate`` and ``prepare`` run on the preparing threads."""

    token_budget: int
    block_tokens: int  # the KV cache's block size: reservations round up to it
    pace: Pace | None  # the measured speed on a CPU

    @property
    def rope_switch(self) -> int: ...

    @property
    def running_ids(self) -> list[int]: ...

    @property
    def num_crops(self) -> int: ...

    def validate(self, request: Request) -> None: ...

    def prepare(self, request: Request) -> Prepared: ...

    @property
    def hardware_text(self) -> str:
        """Where and how the model runs, for the owner's status (e.g. "cuda:0, bfloat16, paged KV cache…")."""
        ...

    @property
    def reused_tokens(self) -> int:
        """Prompt tokens taken from kept KV-cache blocks instead of computed, since start."""
        ...

    def memory_bytes(self) -> int | None:
        """Accelerator memory in use, where it can be known."""
        ...

    def step(self, admit: list[tuple[int, Prepared]], abort: list[int]) -> list[Event]: ...

    def reset(self) -> None: ...

    def is_fatal(self, error: Exception) -> bool:
        """Whether a step's error means the device cannot be used any more (a CUDA error, not a bad input)."""
        ...
