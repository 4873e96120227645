"""Many people, many requests, and Discord and the model failing on purpose, through simcord.

Used by ``tests/bot/test_load_and_faults.py`` (which asserts on the counts) and by
``bench/load.py`` (which prints them as JSON). The bot is the real one; the engine is
:class:`tests.fakes.SlottedFakeEngine` (a line with places, a bounded number answered at once,
text streamed over simcord's virtual time).

The scenario: ``people`` members send ``requests`` requests in a burst (slash commands, prefix
commands, right-click menus and private OCR, spread over ``channels`` channels); then, while the
clock runs, faults are injected: edit 429s and 5xx, deleted command messages, deleted answer
messages, a permission removed from one channel mid-answer, model failures before and after the
answer spilled into a second message, out of memory in the running batch, and a shutdown with the
line still full. Afterwards each request is classified by what the person sees.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from bot.app import VisionBot, create_bot
from bot.reply import (
    CHANNEL_EDIT_BURST,
    CHANNEL_EDITS_PER_S,
    HANDED_OVER_TEXT,
    WORKING_TEXT,
    InteractionSurface,
    MessageSurface,
    Outcome,
    Replies,
    Reply,
    long_answer_text,
    queue_text,
)
from bot.settings import DISCORD_CDN_HOSTS, Settings
from inference import OutOfMemory
from inference.errors import ModelFailed
from tests.fakes import Interrupted, SimcordCdnFetcher, SlottedFakeEngine

SIMCORD_CDN_HOST = "cdn.simcord.invalid"
TICK_S = 1.0
MAX_TICKS = 400
SHUTDOWN_TICK = 25
QUEUE_PREFIX = queue_text(0).template.split("{", 1)[0]


@dataclass
class Sent:
    """One request as the scenario sent it, and what Discord shows for it at the end."""

    index: int
    kind: str  # slash | ocr | prefix | menu
    channel_id: int
    interaction: Any = None  # simcord's InteractionResult for slash / ocr / menu
    command_message_id: int | None = None  # for prefix
    member: Any = None  # who sent a prefix command, and its message (so the scenario can delete it)
    message: Any = None
    reply: Reply | None = None


@dataclass
class Faults:
    deleted_commands: int = 0
    deleted_answers: int = 0
    permission_removed_channel: int | None = None
    injected_http_errors: int = 0
    batch_out_of_memory: int = 0  # answers failed by it
    shutdown_at_tick: int | None = None


@dataclass
class Outcomes:
    counts: Counter = field(default_factory=Counter)
    stale_examples: list[str] = field(default_factory=list)
    lost_examples: list[str] = field(default_factory=list)


class RecordingReplies(Replies):
    """The bot's replies, each also kept here so the scenario can tell which request it belongs to."""

    def __init__(self) -> None:
        super().__init__()
        self.made: list[Reply] = []

    def _make(self, surface, *, code_block: bool) -> Reply:  # type: ignore[override]
        reply = super()._make(surface, code_block=code_block)
        self.made.append(reply)
        return reply


def answer_script(index: int, rng: random.Random) -> str | BaseException | Interrupted:
    """What the model does for the index-th request that reaches it."""
    body = f"Answer {index}: a small red square on a white background, seen from above. " * rng.randint(1, 3)
    long_body = "\n".join(f"Answer {index}, detail {line}: " + "x" * 80 for line in range(35))
    very_long = "\n".join(f"Answer {index}, detail {line}: " + "y" * 80 for line in range(80))
    match index % 20:
        case 3 | 13:  # a model step fails after the answer spilled into a second (and third) message
            return Interrupted(very_long, ModelFailed())
        case 7:  # a model step fails before any text
            return ModelFailed()
        case 5 | 15:
            return long_body
        case _:
            return body


def bot_settings() -> Settings:
    return Settings(
        user_cooldown_s=0,
        max_jobs_per_user=3,
        cdn_hosts=DISCORD_CDN_HOSTS | {SIMCORD_CDN_HOST},
        database_path=":memory:",
    )


def make_bot(engine: SlottedFakeEngine) -> VisionBot:
    bot: VisionBot
    bot = create_bot(bot_settings(), engine, fetcher=SimcordCdnFetcher(lambda: bot.http))
    bot.replies = RecordingReplies()
    return bot


async def run_scenario(
    env: Any,
    bot: VisionBot,
    engine: SlottedFakeEngine,
    *,
    people: int = 100,
    requests: int = 500,
    channels: int = 5,
    seed: int = 0,
    image: bytes,
) -> dict[str, Any]:
    """Run the scenario inside ``simcord.run(bot)``; return the counts (see the module docstring)."""
    rng = random.Random(seed)
    started = time.perf_counter()
    errors = _ErrorLog()
    logging.getLogger().addHandler(errors)
    try:
        return await _run(env, bot, engine, people, requests, channels, rng, image, started, errors)
    finally:
        logging.getLogger().removeHandler(errors)


class _ErrorLog(logging.Handler):
    """Log records at ERROR or above: tracebacks nobody handled, unexpected errors, a dead engine."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def _run(env, bot, engine, people, requests, channels, rng, image, started, errors) -> dict[str, Any]:
    engine.env = env
    engine.answers.extend(answer_script(i, rng) for i in range(requests))
    guild = env.create_guild("Load Test")
    rooms = [guild.create_text_channel(f"room-{n}") for n in range(channels)]
    members = [guild.add_member(env.create_user(f"person{n}")) for n in range(people)]
    photos = {
        room.id: await members[0].send(room, "photo", attachments=[("photo.png", image)]) for room in rooms
    }
    faults = Faults()
    sent: list[Sent] = []

    # -- the burst: the engine holds its first answers, so everyone gets in line before any is answered
    engine.hold(env)
    for index in range(requests):
        member = members[index % people]
        room = rooms[(index // people + index) % channels]
        kind = ("slash", "prefix", "menu", "prefix", "ocr")[index % 5]
        item = Sent(index, kind, room.id)
        if kind == "slash":
            item.interaction = await member.slash(room, "describe", image=("a.png", image))
        elif kind == "ocr":
            item.interaction = await member.slash(room, "ocr", image=("a.png", image))
        elif kind == "menu":
            item.interaction = await member.context_menu(room, "Describe image", photos[room.id])
        else:
            message = await member.send(room, "!describe", attachments=[("a.png", image)])
            item.command_message_id = message.id
            item.member, item.message = member, message
        sent.append(item)

    # -- faults while people wait: some delete their command message
    prefix_items = [item for item in sent if item.kind == "prefix"]
    for item in rng.sample(prefix_items, k=min(5, len(prefix_items))):
        await item.member.delete(item.message)
        faults.deleted_commands += 1

    # -- the clock runs; more faults as answers stream
    engine.release()
    channel_of_token = {}
    previews_per_tick: list[Counter] = []
    seen_requests = 0
    closed = False
    for tick in range(1, MAX_TICKS + 1):
        if tick == 2:
            env.inject_error("PATCH", "*", status=429, message="You are being rate limited.", times=15)
            env.inject_error("PATCH", "*", status=503, message="Service Unavailable", times=15)
            faults.injected_http_errors += 30
        if tick == 3:
            faults.deleted_answers += await _delete_streaming_answers(env, bot, rooms, k=3)
        if tick == 4:
            room = rooms[-1]
            for method in ("PATCH", "POST"):
                env.inject_error(
                    method,
                    f"/channels/{room.id}/messages*",
                    status=403,
                    code=50013,
                    message="Missing Permissions",
                    times=None,
                )
            faults.permission_removed_channel = room.id
        if tick == 8:
            env.backend.faults[:] = [f for f in env.backend.faults if f["status"] != 403]
        if tick in (10, 16):  # the running batch runs out of memory: everyone in it fails
            faults.batch_out_of_memory += engine.fail_running(OutOfMemory(while_answering=True))
        if tick == SHUTDOWN_TICK:
            faults.shutdown_at_tick = tick
            await bot.close()
            closed = True
        await env.advance_time(TICK_S)
        previews_per_tick.append(
            _previews_since(env, seen_requests, sent, bot.replies.made, channel_of_token)
        )
        seen_requests = len(env.http_requests)
        if closed and not bot.replies.open:
            break
    await env.settle()

    _match_replies(sent, bot.replies.made)
    outcomes = _classify(env, sent, rooms, bot.replies.made)
    calls = Counter(_channel_of(entry, channel_of_token) for entry in env.http_requests)
    calls.pop(None, None)
    budget = _budget_check(previews_per_tick, [room.id for room in rooms])
    return {
        "people": people,
        "channels": channels,
        "requests": requests,
        "answered": outcomes.counts[Outcome.ANSWER],
        "refused": outcomes.counts[Outcome.REFUSAL],
        "failed": outcomes.counts[Outcome.FAILURE],
        "stopped": outcomes.counts[Outcome.STOPPED],
        "lost": outcomes.counts["lost"],
        "stale": outcomes.counts["stale"],
        "stale_examples": outcomes.stale_examples[:5],
        "lost_examples": outcomes.lost_examples[:5],
        "busy_refusals_by_engine": engine.busy_refusals,
        "faults": dataclasses.asdict(faults),
        "discord_calls_per_channel": sorted(calls.values()),
        "previews_per_channel": budget["previews"],
        "max_previews_in_any_window": budget["worst"],
        "preview_budget_respected": budget["respected"],
        "virtual_seconds": len(previews_per_tick) * TICK_S,
        "unhandled_errors": len(errors.records),
        "unhandled_error_examples": [record.getMessage()[:120] for record in errors.records[:3]],
        "wall_s": round(time.perf_counter() - started, 2),
    }


async def _delete_streaming_answers(env: Any, bot: VisionBot, rooms: list, *, k: int) -> int:
    """Delete up to ``k`` bot messages that show a half answer right now (as a moderator would)."""
    deleted = 0
    for reply in list(bot.replies.open):
        surface = reply.surface
        if deleted >= k or not isinstance(surface, MessageSurface) or surface.main is None:
            continue
        if reply.answering:
            room = next(room for room in rooms if room.id == surface.main.channel.id)
            handle = next(m for m in room.history() if m.id == surface.main.id)
            await handle.delete()
            deleted += 1
    return deleted


def _channel_of(entry: Any, channel_of_token: dict[str, int]) -> int | None:
    parts = entry.path.strip("/").split("/")
    if parts[0] == "channels":
        return int(parts[1])
    if parts[0] == "webhooks" and len(parts) > 2:
        return channel_of_token.get(parts[2])
    return None


def _previews_since(
    env: Any, start: int, sent: list[Sent], made: list[Reply], channel_of_token: dict[str, int]
) -> Counter:
    """Preview edits per channel in the HTTP calls from ``start`` on: edits whose text is no final state."""
    for reply in made:
        surface = reply.surface
        if isinstance(surface, InteractionSurface) and not surface.ephemeral:
            channel_of_token[surface.interaction.token] = surface.interaction.channel_id
    previews: Counter = Counter()
    for entry in env.http_requests[start:]:
        content = entry.json.get("content") if isinstance(entry.json, dict) else None
        if entry.method != "PATCH" or content is None:
            continue
        if content.startswith(QUEUE_PREFIX) or content.startswith("Answer"):
            channel = _channel_of(entry, channel_of_token)
            if channel is not None and not _is_final_answer_part(content, made):
                previews[channel] += 1
    return previews


def _is_final_answer_part(content: str, made: list[Reply]) -> bool:
    return any(reply.outcome is Outcome.ANSWER and content in reply.final_parts for reply in made)


def _budget_check(previews_per_tick: list[Counter], channel_ids: list[int]) -> dict[str, Any]:
    """Previews in every window of w ticks stay within the burst plus the refill (one tick of slack)."""
    worst, respected, totals = 0, True, {}
    for channel in channel_ids:
        series = [tick[channel] for tick in previews_per_tick]
        totals[channel] = sum(series)
        for width in range(1, len(series) + 1):
            allowed = CHANNEL_EDIT_BURST + CHANNEL_EDITS_PER_S * TICK_S * (width + 1)
            for start in range(0, len(series) - width + 1):
                window = sum(series[start : start + width])
                worst = max(worst, window)
                respected &= window <= allowed
    return {"previews": sorted(totals.values()), "worst": worst, "respected": respected}


def _match_replies(sent: list[Sent], made: list[Reply]) -> None:
    by_interaction, by_message = {}, {}
    for reply in made:
        surface = reply.surface
        if isinstance(surface, InteractionSurface):
            by_interaction[surface.interaction.id] = reply
        elif isinstance(surface, MessageSurface):
            by_message[surface.ctx.message.id] = reply
    for item in sent:
        if item.interaction is not None:
            item.reply = by_interaction.get(item.interaction._interaction.id)
        else:
            item.reply = by_message.get(item.command_message_id)


def _visible(env: Any, item: Sent, rooms: list) -> list[str]:
    """The texts of the messages Discord shows for this request now (main message first)."""
    if item.interaction is not None:
        response = item.interaction.response
        texts = [] if response is None else [response.content]
        texts += [followup.content for followup in item.interaction.followups]
        surface = item.reply.surface if item.reply is not None else None
        if isinstance(surface, InteractionSurface) and surface.channel_message is not None:
            texts += [
                m.content for m in _history(rooms, item.channel_id) if m.id == surface.channel_message.id
            ]
        return texts
    return [
        m.content
        for m in _history(rooms, item.channel_id)
        if m.author.bot and m.reference is not None and m.reference.message_id == item.command_message_id
    ]


def _history(rooms: list, channel_id: int) -> list:
    return next(room for room in rooms if room.id == channel_id).history()


def _classify(env: Any, sent: list[Sent], rooms: list, made: list[Reply]) -> Outcomes:
    outcomes = Outcomes()
    for item in sent:
        reply = item.reply
        if reply is None or reply.outcome is None:
            outcomes.counts["lost"] += 1
            outcomes.lost_examples.append(f"{item.kind} #{item.index}: no final state")
            continue
        texts = _visible(env, item, rooms)
        stale = [t for t in texts if _is_stale(t, reply)]
        if stale:
            outcomes.counts["stale"] += 1
            outcomes.stale_examples.append(f"{item.kind} #{item.index} ({reply.outcome}): {stale[0][:60]!r}")
            continue
        if reply.delivered and reply.final_parts and reply.final_parts[0] not in texts:
            outcomes.counts["lost"] += 1
            outcomes.lost_examples.append(f"{item.kind} #{item.index}: final state not visible")
            continue
        outcomes.counts[reply.outcome] += 1
    # and no message of the bot anywhere may show anything but a final state (a continuation left
    # behind by a failed answer, a place in line, "working"): every one is part of some final state
    final_texts = {part for reply in made for part in reply.final_parts} | {HANDED_OVER_TEXT}
    for room in rooms:
        for message in room.history():
            if not message.author.bot or message.webhook_id is not None:
                continue
            if message.content in final_texts or (message.content == "" and message.attachments):
                continue
            outcomes.counts["stale"] += 1
            outcomes.stale_examples.append(f"channel message: {message.content[:60]!r}")
    return outcomes


def _is_stale(text: str, reply: Reply) -> bool:
    if text.startswith(QUEUE_PREFIX) or text == WORKING_TEXT or text == "":
        return True
    if text == HANDED_OVER_TEXT or text.startswith(long_answer_text(0).template.split("(", 1)[0]):
        return False
    return text not in reply.final_parts


def summary(counts: dict[str, Any]) -> str:
    keys = ("requests", "answered", "refused", "failed", "stopped", "lost", "stale")
    return ", ".join(f"{key} {counts[key]}" for key in keys)
