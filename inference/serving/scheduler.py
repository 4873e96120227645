"""Who runs next: a pure queueing and batching policy (no torch, no asyncio, no I/O).

- Bounded: at most ``max_waiting`` requests wait; one more is refused at once.
- Two classes: requests someone is waiting for (:attr:`Priority.PEOPLE`) always go before
  background work nobody asked for (:attr:`Priority.BACKGROUND`, automatic alt text), which has a
  line of its own (``max_background_waiting``) so it can never take a person's place in the queue.
- Fair within each class: waiting requests are admitted round-robin across servers, and within each
  server across users, the one served least recently first, so one server's or one person's burst
  cannot starve everyone else and a newcomer does not wait behind someone already being served;
  ``positions`` tells each request its place. One server holds at most half of a line
  (:meth:`Scheduler.group_is_full`), so others always find room in it.
- Batched: up to ``max_batch_size`` sequences decode together, as long as their
  KV-cache reservations (prompt + new tokens, in whole blocks of ``block_tokens``) fit ``token_budget``.
- Exact: Phi-3's LongRoPE picks short or long factors from the longest sequence
  in a forward pass, so a sequence only shares a batch with sequences that use
  the same factors for their whole life; one that would cross the switch runs
  alone. A batched answer therefore equals the same request run alone.
"""

from __future__ import annotations

import enum
import itertools
from collections import deque
from dataclasses import dataclass

from inference.types import Priority, group_share

# How many users' (and servers') "last served" marks to remember; older marks are forgotten (those
# users then count as never served, which only ever moves them forward).
MAX_REMEMBERED_USERS = 4096


class RopeRegime(enum.Enum):
    SHORT = "short"  # prompt + answer stay within original_max_position_embeddings
    LONG = "long"  # the prompt alone is already past it
    CROSSING = "crossing"  # starts short, may end long: cannot share a batch


def rope_regime(prompt_tokens: int, max_new_tokens: int, switch_at: int) -> RopeRegime:
    if prompt_tokens > switch_at:
        return RopeRegime.LONG
    if prompt_tokens + max_new_tokens <= switch_at:
        return RopeRegime.SHORT
    return RopeRegime.CROSSING


@dataclass(frozen=True)
class Ticket:
    """What the scheduler knows about one request."""

    request_id: int
    user_id: int | None
    prompt_tokens: int
    max_new_tokens: int
    regime: RopeRegime
    priority: Priority = Priority.PEOPLE
    group_id: int | None = None  # the server it was asked in (None: a DM)

    @property
    def reserved_tokens(self) -> int:
        return self.prompt_tokens + self.max_new_tokens


class QueueFull(Exception):
    pass


class DoesNotFit(Exception):
    """A request that needs more cache than the whole budget."""

    def __init__(self, tokens: int, capacity: int) -> None:
        self.tokens, self.capacity = tokens, capacity
        super().__init__(f"needs {tokens} tokens of cache; the budget is {capacity}")


QueueKey = tuple[Priority, int | None, int | None]  # a class, a server and a user: each has its own line
GroupKey = tuple[Priority, int | None]


class Scheduler:
    def __init__(
        self,
        max_batch_size: int = 8,
        max_waiting: int = 64,
        token_budget: int = 64_000,
        max_background_waiting: int | None = None,
        block_tokens: int = 1,
    ):
        if max_batch_size < 1 or max_waiting < 0 or token_budget < 1:
            raise ValueError("max_batch_size and token_budget must be positive, max_waiting not negative")
        self.max_batch_size = max_batch_size
        self.max_waiting = max_waiting
        background = max_waiting if max_background_waiting is None else max_background_waiting
        self.max_background_waiting = background
        self.token_budget = token_budget
        self.block_tokens = block_tokens  # the KV cache is handed out in blocks: reservations round up
        self._queues: dict[QueueKey, deque[Ticket]] = {}  # (class, user) -> waiting tickets, arrival order
        self._running: dict[int, Ticket] = {}
        self._served_at: dict[QueueKey, int] = {}  # (class, server, user) -> tick of their latest admission
        self._group_served_at: dict[GroupKey, int] = {}  # (class, server) -> tick of its latest admission
        self._ticks = itertools.count(1)

    # -- queue ---------------------------------------------------------------------------------
    @property
    def num_waiting(self) -> int:
        """Requests people are waiting for (background work is counted apart)."""
        return self.waiting_in(Priority.PEOPLE)

    def waiting_in(self, priority: Priority) -> int:
        return sum(len(q) for key, q in self._queues.items() if key[0] is priority)

    def line_limit(self, priority: Priority) -> int:
        return self.max_waiting if priority is Priority.PEOPLE else self.max_background_waiting

    def is_full(self, priority: Priority = Priority.PEOPLE, *, held: int = 0) -> bool:
        """No room in this class's line: one more would be refused. ``held``: places the engine has promised
        to requests not queued yet (their pictures still on the way), which count as waiting."""
        return self.waiting_in(priority) + held >= self.line_limit(priority)

    def group_is_full(self, priority: Priority, group_id: int | None, *, held: int = 0) -> bool:
        """The server ``group_id`` already holds its share of this class's line (half of it, at least one
        place), places promised to it (``held``) included. A DM (None) has no share to keep to."""
        if group_id is None:
            return False
        waiting = sum(len(q) for key, q in self._queues.items() if key[:2] == (priority, group_id))
        return waiting + held >= group_share(self.line_limit(priority))

    @property
    def running(self) -> list[Ticket]:
        return list(self._running.values())

    def has_work(self) -> bool:
        return bool(self._running) or bool(self._queues)  # background work included

    def add(self, ticket: Ticket) -> None:
        if self.reserved(ticket) > self.token_budget:
            needed = self.reserved(ticket)
            raise DoesNotFit(needed, self.token_budget)
        if self.is_full(ticket.priority):
            raise QueueFull(f"{self.waiting_in(ticket.priority)} requests of this kind are already waiting")
        self._queues.setdefault(_key(ticket), deque()).append(ticket)

    def abort(self, request_id: int) -> bool:
        """Forget a request, waiting or running. True if it was known."""
        if self._running.pop(request_id, None) is not None:
            return True
        for key, queue in list(self._queues.items()):
            for ticket in queue:
                if ticket.request_id == request_id:
                    queue.remove(ticket)
                    if not queue:
                        del self._queues[key]
                    return True
        return False

    def finish(self, request_id: int) -> None:
        self._running.pop(request_id, None)

    def waiting_order(self) -> list[Ticket]:
        """Waiting tickets in admission order: every person's request before any background one; in
        each class, each user's first, then each user's second, and so on.

        Users are taken least recently served first (never served: in order of arrival).
        """
        return [ticket for priority in Priority for ticket in self._round_robin(priority)]

    def _round_robin(self, priority: Priority) -> list[Ticket]:
        """Servers in turn (the one served least recently first), and within each server its people in turn:
        each server's first, then each server's second, and so on."""
        by_group: dict[int | None, list[deque[Ticket]]] = {}
        for key, queue in self._queues.items():
            if key[0] is priority:
                by_group.setdefault(key[1], []).append(queue)
        groups = sorted(
            by_group,
            key=lambda group: (
                self._group_served_at.get((priority, group), 0),
                min(q[0].request_id for q in by_group[group]),
            ),
        )
        orders = [self._people_in_turn(by_group[group]) for group in groups]
        return _interleaved(orders)

    def _people_in_turn(self, queues: list[deque[Ticket]]) -> list[Ticket]:
        """One server's waiting tickets: each user's first, then each user's second, and so on (users taken
        least recently served first; never served: in order of arrival)."""
        queues = sorted(queues, key=lambda q: (self._served_at.get(_key(q[0]), 0), q[0].request_id))
        return _interleaved([list(queue) for queue in queues])

    def positions(self) -> dict[int, int]:
        """request_id -> 1-based place in line for every waiting request."""
        return {t.request_id: i for i, t in enumerate(self.waiting_order(), start=1)}

    # -- batching ------------------------------------------------------------------------------
    def _fits(self, ticket: Ticket, batch: list[Ticket]) -> bool:
        if len(batch) >= self.max_batch_size:
            return False
        if batch:
            regime = batch[0].regime
            if regime is RopeRegime.CROSSING or ticket.regime is not regime:
                return False
        return sum(self.reserved(t) for t in batch) + self.reserved(ticket) <= self.token_budget

    def reserved(self, ticket: Ticket) -> int:
        """The cache a request holds while it runs: its tokens, rounded up to whole blocks."""
        return -(-ticket.reserved_tokens // self.block_tokens) * self.block_tokens

    def admit(self) -> list[Ticket]:
        """Move the waiting requests that can join the running batch now into it, fairly; return them."""
        admitted: list[Ticket] = []
        batch = list(self._running.values())
        for ticket in self.waiting_order():
            if not self._fits(ticket, batch):
                if not batch:  # cannot happen: add() refuses tickets larger than the budget
                    raise DoesNotFit(self.reserved(ticket), self.token_budget)
                # Strict fairness: the head of the line is not overtaken by a smaller or
                # differently-shaped request; it goes first once the batch drains.
                break
            batch.append(ticket)
            admitted.append(ticket)
        for ticket in admitted:
            self._take(ticket)
        return admitted

    def _take(self, ticket: Ticket) -> None:
        key = _key(ticket)
        queue = self._queues[key]
        queue.remove(ticket)
        if not queue:
            del self._queues[key]
        self._running[ticket.request_id] = ticket
        # The server and the user just served move to the back of their rotations.
        tick = next(self._ticks)
        self._served_at[key] = tick
        self._group_served_at[key[:2]] = tick
        _forget_oldest(self._served_at)
        _forget_oldest(self._group_served_at)


def _forget_oldest(marks: dict) -> None:
    """Past :data:`MAX_REMEMBERED_USERS` marks, the older half goes."""
    if len(marks) > MAX_REMEMBERED_USERS:
        for old in sorted(marks, key=marks.__getitem__)[: MAX_REMEMBERED_USERS // 2]:
            del marks[old]


def _interleaved(orders: list[list[Ticket]]) -> list[Ticket]:
    """The first of each order, then the second of each, and so on."""
    merged: list[Ticket] = []
    depth = 0
    while True:
        layer = [order[depth] for order in orders if len(order) > depth]
        if not layer:
            return merged
        merged.extend(layer)
        depth += 1


def _key(ticket: Ticket) -> QueueKey:
    return (ticket.priority, ticket.group_id, ticket.user_id)
