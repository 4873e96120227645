"""Discord's edit limits, kept on our side: one :class:`EditBudget` per channel and per interaction.

A live preview is skipped, never queued, when its budget is spent; acknowledgements and final states always
go out (and spend what they use).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

# Discord's per-channel limit on message sends and edits is about five per five seconds.
CHANNEL_EDITS_PER_S = 1.0
CHANNEL_EDIT_BURST = 5
INTERACTION_EDITS_PER_S = 1.0
INTERACTION_EDIT_BURST = 5


def monotonic() -> float:
    return time.monotonic()  # looked up at call time, so a simulated clock is honoured


@dataclass
class EditBudget:
    """A token bucket: ``burst`` calls at once, refilled at ``per_s``; finals may run it into debt.

    Previews need a token each and are skipped without one; acknowledgements and final states
    always go out and may take it below zero, so previews pause until the budget recovers.
    """

    per_s: float
    burst: int
    clock: Callable[[], float] = monotonic
    tokens: float = field(init=False)
    updated: float = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = float(self.burst)
        self.updated = self.clock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(float(self.burst), self.tokens + (now - self.updated) * self.per_s)
        self.updated = now

    def available(self) -> float:
        self._refill()
        return self.tokens

    def spend(self, calls: int = 1) -> None:
        """Count calls made. The debt stops at one burst: Discord itself makes calls past that wait."""
        self._refill()
        self.tokens = max(self.tokens - calls, -float(self.burst))


class EditBudgets:
    """One budget per channel and per interaction, shared by every reply there."""

    def __init__(self, clock: Callable[[], float] = monotonic) -> None:
        self.clock = clock
        self._budgets: dict[Hashable, EditBudget] = {}

    def get(self, key: Hashable) -> EditBudget:
        budget = self._budgets.get(key)
        if budget is None:
            if len(self._budgets) > 10_000:  # forget full (idle) budgets now and then
                self._budgets = {k: b for k, b in self._budgets.items() if b.available() < b.burst}
            kind = key[0] if isinstance(key, tuple) else "channel"
            per_s, burst = (
                (INTERACTION_EDITS_PER_S, INTERACTION_EDIT_BURST)
                if kind == "interaction"
                else (CHANNEL_EDITS_PER_S, CHANNEL_EDIT_BURST)
            )
            budget = self._budgets[key] = EditBudget(per_s, burst, self.clock)
        return budget
