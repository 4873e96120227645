"""Who may ask what, where, and how often. Denials raise :class:`bot.errors.Denied` subclasses."""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import discord

from bot.errors import Denied, OnCooldown, OverHourlyQuota, TooManyJobs
from bot.settings import Settings
from bot.text import N_, T, Text
from inference import Task

DM_DENIED_TEXT = N_("I don't answer in direct messages; please use me in a server.")
GUILD_DENIED_TEXT = N_("I'm not enabled in this server.")
OCR_DENIED_TEXT = N_("Reading text out of images is limited to members with a moderator (OCR) role.")
NO_CHANNEL_TEXT = N_("I don't answer in this channel, and no channel of this server is open to me right now.")
MAX_LISTED_CHANNELS = 5
HOUR_S = 3600.0
MAX_REMEMBERED_PEOPLE = 10_000  # marks kept before those of people quiet for a while are dropped
REFUSAL_INTERVAL_S = 30.0  # a person is told a public refusal at most this often


@dataclass(frozen=True)
class Requester:
    """The facts about a request that permissions depend on."""

    user_id: int
    guild_id: int | None
    channel_id: int | None
    parent_channel_id: int | None = None  # for threads: the channel they live in
    role_ids: frozenset[int] = frozenset()

    @classmethod
    def of(cls, user: discord.abc.User, channel: object, guild: discord.Guild | None) -> Requester:
        roles = frozenset(role.id for role in getattr(user, "roles", ()))
        return cls(
            user_id=user.id,
            guild_id=guild.id if guild is not None else None,
            channel_id=getattr(channel, "id", None),
            parent_channel_id=getattr(channel, "parent_id", None),
            role_ids=roles,
        )


@dataclass(frozen=True)
class AccessPolicy:
    """Allowed servers and channels, DMs on/off, and who may run OCR."""

    allowed_guild_ids: frozenset[int] = frozenset()
    allowed_channel_ids: frozenset[int] = frozenset()
    ocr_role_ids: frozenset[int] = frozenset()
    allow_dms: bool = True
    # A server's own choice of channels, within the owner's (None: wherever the owner allows).
    server_channel_ids: frozenset[int] | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> AccessPolicy:
        return cls(
            allowed_guild_ids=settings.allowed_guild_ids,
            allowed_channel_ids=settings.allowed_channel_ids,
            ocr_role_ids=settings.ocr_role_ids,
            allow_dms=settings.allow_dms,
        )

    def check(self, requester: Requester, task: Task) -> None:
        """Raise :class:`Denied` saying why, or return if the request may go ahead."""
        if requester.guild_id is None:
            if not self.allow_dms:
                raise Denied(DM_DENIED_TEXT)
        else:
            if self.allowed_guild_ids and requester.guild_id not in self.allowed_guild_ids:
                raise Denied(GUILD_DENIED_TEXT)
            for channels in (self.allowed_channel_ids, self.server_channel_ids):
                if channels and not (
                    requester.channel_id in channels or requester.parent_channel_id in channels
                ):
                    raise Denied(self._channel_denied_text(self.usable_channels()))
        if task is Task.OCR and self.ocr_role_ids and not (requester.role_ids & self.ocr_role_ids):
            raise Denied(OCR_DENIED_TEXT)

    def usable_channels(self) -> frozenset[int]:
        """The channels allowed by both the owner and the server (empty: no list, anywhere)."""
        if self.allowed_channel_ids and self.server_channel_ids:
            return self.allowed_channel_ids & self.server_channel_ids
        return self.server_channel_ids or self.allowed_channel_ids

    @staticmethod
    def _channel_denied_text(usable: frozenset[int]) -> str | Text:
        if not usable:
            return NO_CHANNEL_TEXT
        channels = sorted(usable)
        listed = ", ".join(f"<#{channel_id}>" for channel_id in channels[:MAX_LISTED_CHANNELS])
        if len(channels) > MAX_LISTED_CHANNELS:
            listed += ", …"
        return T("I don't answer in this channel. Try {channels}.", channels=listed)


def _monotonic() -> float:
    # Looked up at call time so a patched clock (tests, simulators) is honoured.
    return time.monotonic()


class JobLimiter:
    """Per-user cooldown between requests, a cap on requests waiting or running at once, and (where the owner
    sets one) a cap on requests in any hour."""

    def __init__(
        self,
        *,
        cooldown_s: float,
        max_jobs_per_user: int,
        per_hour: int = 0,
        clock: Callable[[], float] = _monotonic,
    ) -> None:
        self._cooldown_s = cooldown_s
        self._max_jobs = max_jobs_per_user
        self._per_hour = per_hour
        self._clock = clock
        self._active: Counter[int] = Counter()
        self._last_start: dict[int, float] = {}
        self._starts: dict[int, deque[float]] = {}  # each user's starts in the last hour (with per_hour)

    @classmethod
    def from_settings(cls, settings: Settings) -> JobLimiter:
        return cls(
            cooldown_s=settings.user_cooldown_s,
            max_jobs_per_user=settings.max_jobs_per_user,
            per_hour=settings.requests_per_hour,
        )

    def active_jobs(self, user_id: int) -> int:
        return self._active[user_id]

    def admit(self, user_id: int, *, cooldown_s: float | None = None, max_jobs: int | None = None) -> None:
        """Count a new job for this user, or raise :class:`TooManyJobs` / :class:`OnCooldown`.

        ``cooldown_s`` and ``max_jobs`` replace the defaults (a server's own choice).
        """
        cooldown_s = self._cooldown_s if cooldown_s is None else cooldown_s
        max_jobs = self._max_jobs if max_jobs is None else max_jobs
        if self._active[user_id] >= max_jobs:
            raise TooManyJobs(max_jobs)
        now = self._clock()
        last = self._last_start.get(user_id)
        if last is not None and now - last < cooldown_s:
            raise OnCooldown(cooldown_s - (now - last))
        if self._per_hour:
            self._count_in_hour(user_id, now)
        self._last_start[user_id] = now
        self._active[user_id] += 1

    def _count_in_hour(self, user_id: int, now: float) -> None:
        """Count one more start in the user's hour, or raise :class:`OverHourlyQuota`."""
        starts = self._starts.setdefault(user_id, deque())
        while starts and now - starts[0] >= HOUR_S:
            starts.popleft()
        if len(starts) >= self._per_hour:
            raise OverHourlyQuota(self._per_hour, HOUR_S - (now - starts[0]))
        starts.append(now)
        if len(self._starts) > MAX_REMEMBERED_PEOPLE:  # forget those quiet for an hour
            self._starts = {user: times for user, times in self._starts.items() if now - times[-1] < HOUR_S}

    def release(self, user_id: int) -> None:
        self._active[user_id] -= 1
        if self._active[user_id] <= 0:
            del self._active[user_id]

    @property
    def cooldown_s(self) -> float:
        return self._cooldown_s

    @property
    def max_jobs(self) -> int:
        return self._max_jobs

    @contextmanager
    def job(
        self, user_id: int, *, cooldown_s: float | None = None, max_jobs: int | None = None
    ) -> Iterator[None]:
        """``with limiter.job(user_id):`` admits the job and always releases it."""
        self.admit(user_id, cooldown_s=cooldown_s, max_jobs=max_jobs)
        try:
            yield
        finally:
            self.release(user_id)


class RefusalThrottle:
    """A person refused again and again (a cooldown, a full line) is told once every
    :data:`REFUSAL_INTERVAL_S`, not once a message: the channel does not fill with the bot's refusals."""

    def __init__(
        self, interval_s: float = REFUSAL_INTERVAL_S, clock: Callable[[], float] = _monotonic
    ) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._told_at: dict[int, float] = {}

    def may_tell(self, user_id: int) -> bool:
        """True (and counted) if this person may be told a refusal now."""
        now = self._clock()
        told = self._told_at.get(user_id)
        if told is not None and now - told < self.interval_s:
            return False
        self._told_at[user_id] = now
        if len(self._told_at) > MAX_REMEMBERED_PEOPLE:
            self._told_at = {user: at for user, at in self._told_at.items() if now - at < self.interval_s}
        return True
