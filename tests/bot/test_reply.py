"""One Reply per job: ordered edits, one final state, the shared edit budget, Discord's failures."""

from __future__ import annotations

import asyncio
import datetime
from types import SimpleNamespace

import discord
import pytest

from bot.errors import AnswerWindowClosed
from bot.formatting import format_answer
from bot.jobs import MIN_ANSWER_TIME_S, answer_time_limit
from bot.reply import (
    ANSWER_FILENAME,
    HANDOVER_MARGIN_S,
    INTERACTION_TOKEN_S,
    EditBudget,
    InteractionSurface,
    Outcome,
    Replies,
    Reply,
    ReplyGone,
    call_discord,
    queue_text,
)


class FakeResponse:
    """What discord.HTTPException reads from an aiohttp response."""

    def __init__(self, status: int, retry_after: float | None = None) -> None:
        self.status = status
        self.reason = "injected"
        self.headers = {} if retry_after is None else {"Retry-After": str(retry_after)}


def http_error(status: int, retry_after: float | None = None) -> discord.HTTPException:
    kind = {403: discord.Forbidden, 404: discord.NotFound}.get(status, discord.HTTPException)
    if status >= 500:
        kind = discord.DiscordServerError
    return kind(FakeResponse(status, retry_after), {"code": 0, "message": f"injected {status}"})


class RecordingPosted:
    def __init__(self, surface: RecordingSurface, number: int) -> None:
        self.surface, self.number = surface, number

    async def edit(self, *, content: str) -> None:
        await self.surface.record(f"edit {self.number}", content)

    async def delete(self) -> None:
        await self.surface.record(f"delete {self.number}", "")


class RecordingSurface:
    """Records every call; ``failures`` makes the next calls of a kind raise."""

    budget_keys = ()
    acknowledging_spends_an_edit = True  # as a prefix command's message
    private = False
    shows_only_answers = False

    def answer_window_s(self) -> float | None:
        return None

    def shown_privately(self, private: bool) -> bool:
        return False

    def hand_over_in_s(self) -> float | None:
        return None

    async def hand_over(self, text: str = "") -> None:
        raise AssertionError("a message never needs handing over")

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.files: list[bytes] = []
        self.added = 0
        self.failures: dict[str, list[BaseException]] = {}
        self.answering: asyncio.Event | None = None  # when set up: Discord answers each call once it is set
        self.views: list[object] = []  # the buttons each acknowledgement or main-message edit carried

    async def record(self, kind: str, content: str) -> None:
        if self.answering is not None:
            await self.answering.wait()
        queued = self.failures.get(kind.split()[0])
        if queued:
            raise queued.pop(0)
        self.events.append((kind, content))

    async def acknowledge(self, view=discord.utils.MISSING, text="") -> None:
        await self.record("ack", "")
        self.views.append(view)

    async def show(self, content: str, *, private: bool, view=discord.utils.MISSING) -> None:
        await self.record("show", content)
        self.views.append(view)

    async def add(self, content: str) -> RecordingPosted:
        await self.record("add", content)
        self.added += 1
        return RecordingPosted(self, self.added)

    async def add_file(self, content, file) -> None:
        await self.record("file", file.filename)
        self.files.append(file.fp.read())

    async def delete_main(self) -> None:
        await self.record("delete 0", "")

    async def main_message_id(self) -> int | None:
        return None


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make_reply(surface=None, *, budgets=None, clock=None, **options) -> tuple[Reply, RecordingSurface, Clock]:
    surface = surface or RecordingSurface()
    clock = clock or Clock()
    budgets = budgets if budgets is not None else [EditBudget(per_s=100.0, burst=100, clock=clock)]
    return Reply(surface, budgets, clock=clock, **options), surface, clock


def messages_after(events: list[tuple[str, str]]) -> list[str | None]:
    """What the channel shows once these events have happened: the main message, then the added ones."""
    messages: list[str | None] = [""]
    for kind, content in events:
        if kind == "show":
            messages[0] = content
        elif kind == "add":
            messages.append(content)
        elif kind.startswith("edit"):
            messages[int(kind.split()[1])] = content
        elif kind.startswith("delete"):
            messages[int(kind.split()[1])] = None
    return [message for message in messages if message is not None]


def timed(clock: Clock, items: list[str], seconds_each: float):
    async def stream():
        for step, item in enumerate(items):
            clock.now = step * seconds_each
            yield item

    return stream()


# ---------------------------------------------------------------- streaming and the final answer


async def test_stream_edits_at_most_once_per_interval_then_shows_the_final_text():
    reply, surface, clock = make_reply()
    text = await reply.stream(timed(clock, ["a", "b", "c", "d", "e"], 0.6))
    assert text == "abcde"
    # pieces at t=0, 0.6, 1.2, 1.8, 2.4: previews at 1.2 and 2.4; the final text is already showing
    assert surface.events == [("show", "abc"), ("show", "abcde")]
    assert reply.outcome is Outcome.ANSWER and reply.delivered and reply.closed.is_set()


async def test_long_answers_become_several_messages():
    reply, surface, _ = make_reply()
    text = "\n".join("x" * 90 for _ in range(50))  # ~4,550 characters
    await reply.answer(text)
    assert [kind for kind, _ in surface.events] == ["show", "add", "add"]
    assert "\n".join(content for _, content in surface.events) == text


async def test_very_long_answers_become_a_text_file():
    reply, surface, _ = make_reply()
    text = "\n".join("y" * 90 for _ in range(150))  # ~13,650 characters, more than 4 messages
    await reply.answer(text)
    assert surface.events[0][0] == "show" and "attached as a file" in surface.events[0][1]
    assert surface.events[1] == ("file", ANSWER_FILENAME)
    assert surface.files == [text.encode()]


async def test_a_long_answer_continues_in_new_messages_while_it_streams():
    reply, surface, clock = make_reply()
    lines = [f"{n:02d} " + "w" * 96 + "\n" for n in range(45)]  # 19 lines per message
    text = await reply.stream(timed(clock, lines, 0.25))
    kinds = [kind for kind, _ in surface.events]
    assert kinds.index("add") < len(kinds) - 2  # posted while the answer was still streaming
    assert kinds.count("add") == 2 and "edit 1" in kinds
    assert not any(kind.startswith("delete") for kind in kinds)
    assert messages_after(surface.events) == format_answer(text, code_block=False)


async def test_a_preview_past_four_messages_ends_as_a_file_and_its_continuations_go():
    reply, surface, clock = make_reply()
    lines = ["v" * 99 + "\n" for _ in range(120)]  # ~12,000 characters
    text = await reply.stream(timed(clock, lines, 0.5))
    kinds = [kind for kind, _ in surface.events]
    assert kinds.count("add") == 3  # the live preview stops at four messages
    assert {"delete 1", "delete 2", "delete 3"} <= set(kinds)
    assert kinds[-2:] == ["show", "file"] and "attached as a file" in surface.events[-2][1]
    assert surface.files == [text.encode()]


# ---------------------------------------------------------------- one final state, written last


async def test_a_failure_after_the_answer_spilled_removes_the_half_answer():
    reply, surface, clock = make_reply()

    async def spills_then_fails():
        for step in range(30):
            clock.now = step * 0.5
            yield "z" * 99 + "\n"
        raise RuntimeError("the model broke")

    with pytest.raises(RuntimeError):
        await reply.stream(spills_then_fails())
    assert "add" in [kind for kind, _ in surface.events]  # a second message was showing
    await reply.finish(Outcome.FAILURE, "The model failed while answering.")
    assert messages_after(surface.events) == ["The model failed while answering."]
    assert reply.outcome is Outcome.FAILURE


async def test_the_final_state_is_written_once_and_never_overwritten():
    reply, surface, _ = make_reply()
    await reply.finish(Outcome.STOPPED, "The bot is shutting down.")
    await reply.finish(Outcome.FAILURE, "Something else.")
    await reply.answer("A late answer.")
    reply.place_in_line(3)
    await asyncio.sleep(0)
    assert surface.events == [("show", "The bot is shutting down.")]
    assert reply.outcome is Outcome.STOPPED


async def test_a_place_in_line_edit_in_flight_lands_before_the_final_state():
    # A "#3 in line" edit still on its way to Discord when the bot stops must not land after the final state.
    reply, surface, _ = make_reply()
    surface.answering = asyncio.Event()  # Discord holds every call until told to answer
    reply.place_in_line(3)
    await asyncio.sleep(0)  # the edit is on its way
    finishing = asyncio.create_task(reply.finish(Outcome.STOPPED, "The bot is shutting down."))
    reply.place_in_line(2)  # a late announcement while stopping
    await asyncio.sleep(0)
    assert not finishing.done()  # the final state waits for the edit in flight
    surface.answering.set()
    await finishing
    assert surface.events[-1] == ("show", "The bot is shutting down.")
    assert str(queue_text(2)) not in [content for _, content in surface.events]


async def test_place_in_line_is_shown_while_waiting_and_never_after_the_answer():
    clock = Clock()
    reply, surface, _ = make_reply(clock=clock)

    async def queued_then_answered():
        for t, position in [(0.0, 4), (0.5, 3), (1.2, 2), (1.3, 2), (2.5, 1), (2.6, 0)]:
            clock.now = t
            reply.place_in_line(position)
            await asyncio.sleep(0)
            yield ""
        yield "The answer."

    await reply.stream(queued_then_answered())
    # #3 came too soon after #4 and is skipped; repeats and 0 are ignored; the answer is last.
    assert surface.events == [
        ("show", str(queue_text(4))),
        ("show", str(queue_text(2))),
        ("show", str(queue_text(1))),
        ("show", "The answer."),
    ]


async def test_a_long_wait_is_shown_in_minutes_and_a_short_one_is_not():
    clock = Clock()
    reply, surface, _ = make_reply(clock=clock)

    async def waiting_on_a_slow_machine():
        for t, position, wait_s in [(0.0, 3, 290.0), (2.0, 2, 45.0)]:
            clock.now = t
            reply.place_in_line(position, wait_s)
            await asyncio.sleep(0)
            yield ""
        yield "The answer."

    await reply.stream(waiting_on_a_slow_machine())
    shown = [content for _, content in surface.events]
    assert shown[0] == "You're #3 in line; I'll start on it in about 5 min. \N{HOURGLASS WITH FLOWING SAND}"
    assert shown[1] == str(queue_text(2)) and "min" not in shown[1]


# ---------------------------------------------------------------- the edit budget


async def test_previews_are_skipped_when_the_channel_budget_is_spent_but_finals_go_out():
    clock = Clock()
    channel = EditBudget(per_s=1.0, burst=2, clock=clock)
    replies = [make_reply(budgets=[channel], clock=clock)[:2] for _ in range(4)]

    async def streams(reply: Reply) -> str:
        async def pieces():
            for step in range(1, 6):
                clock.now = step * 1.0
                yield f"{step} "
                await asyncio.sleep(0)

        return await reply.stream(pieces())

    await asyncio.gather(*(streams(reply) for reply, _ in replies))
    calls = sum(len(surface.events) for _, surface in replies)
    previews = calls - 4
    # 4 replies x 4 possible previews, but the channel allows 2 at once plus 1 a second over 5 s
    assert previews <= 2 + 5
    assert sum(reply.previews_skipped for reply, _ in replies) > 0
    for reply, surface in replies:
        assert surface.events[-1] == ("show", "1 2 3 4 5") and reply.delivered


async def test_an_edit_budget_refills_at_its_rate():
    clock = Clock()
    budget = EditBudget(per_s=2.0, burst=3, clock=clock)
    budget.spend(3)
    assert budget.available() == 0
    clock.now = 1.0
    assert budget.available() == 2
    budget.spend(5)  # a final state may go into debt
    assert budget.available() == -3
    budget.spend(50)
    assert budget.available() == -3  # but no deeper than one burst
    clock.now = 10.0
    assert budget.available() == 3  # and never above the burst


# ---------------------------------------------------------------- Discord's failures


async def test_rate_limits_and_server_errors_are_retried_after_the_delay_discord_gives():
    attempts = []

    async def flaky():
        attempts.append(asyncio.get_running_loop().time())
        if len(attempts) == 1:
            raise http_error(429, retry_after=0.05)
        if len(attempts) == 2:
            raise http_error(503, retry_after=0.01)

    assert await call_discord(flaky, attempts=4) is True
    assert len(attempts) == 3
    assert attempts[1] - attempts[0] >= 0.05


async def test_a_preview_is_not_retried_and_a_final_gives_up_after_its_tries():
    surface = RecordingSurface()
    surface.failures["show"] = [http_error(500, retry_after=0)] * 5
    reply, _, clock = make_reply(surface)
    clock.now = 5.0
    assert await reply._preview(["preview"]) is False
    assert len(surface.failures["show"]) == 4  # one try, no retry
    await reply.answer("final")
    assert reply.outcome is Outcome.ANSWER and not reply.delivered
    assert surface.failures["show"] == []


@pytest.mark.parametrize("status", [403, 404])
async def test_a_deleted_message_or_a_removed_permission_ends_the_output_quietly(status):
    closed = []
    surface = RecordingSurface()
    reply, _, clock = make_reply(surface)

    async def endless():
        try:
            step = 0
            while True:
                step += 1
                clock.now = step * 0.5
                if step == 4:
                    surface.failures["show"] = [http_error(status)]
                yield "more "
        finally:
            closed.append(True)

    with pytest.raises(ReplyGone):
        await reply.stream(endless())
    assert closed == [True]  # the generation behind it is stopped
    await reply.finish(Outcome.STOPPED, "Stopped.")
    assert reply.outcome is Outcome.STOPPED and not reply.delivered
    assert ("show", "Stopped.") not in surface.events  # nothing more is sent to a gone message
    assert surface.events[-1] == ("delete 0", "")  # the half answer is removed where it still shows


async def test_a_continuation_someone_deleted_does_not_stop_the_final_state():
    surface = RecordingSurface()
    reply, _, _ = make_reply(surface)
    await reply.answer("\n".join("x" * 90 for _ in range(30)))  # two messages
    surface.failures["delete"] = [http_error(404)]
    await reply.finish(Outcome.FAILURE, "Failed.")  # written once: the answer stays
    assert reply.outcome is Outcome.ANSWER


async def test_acknowledging_that_discord_refuses_is_a_gone_reply():
    surface = RecordingSurface()
    surface.failures["ack"] = [http_error(404)]
    reply, _, _ = make_reply(surface)
    with pytest.raises(ReplyGone):
        await reply.acknowledge()


# ---------------------------------------------------------------- the interaction window and shutdown


class FakeInteraction:
    """Just what InteractionSurface reads of a discord.Interaction."""

    def __init__(self, age_s: float) -> None:
        self.id = 1
        self.channel_id = 2
        self.created_at = discord.utils.utcnow() - datetime.timedelta(seconds=age_s)
        self.response = SimpleNamespace(is_done=lambda: True)
        self.extras: dict = {}


@pytest.mark.parametrize(
    ("age_s", "private", "expected"),
    [
        (0, True, pytest.approx(INTERACTION_TOKEN_S - HANDOVER_MARGIN_S, abs=2)),  # fresh: the whole window
        (INTERACTION_TOKEN_S - HANDOVER_MARGIN_S - 100, True, pytest.approx(100, abs=2)),  # what is left
        (0, False, None),  # public: no bound, it moves to a channel message instead
    ],
)
def test_a_private_answer_is_given_the_time_discord_leaves(age_s, private, expected):
    reply, _, _ = make_reply(InteractionSurface(FakeInteraction(age_s), ephemeral=private))
    assert answer_time_limit(reply) == expected  # the engine bounds it further by REQUEST_TIMEOUT_S


def test_a_private_answer_that_could_not_arrive_in_time_is_refused_before_it_starts():
    old = FakeInteraction(INTERACTION_TOKEN_S - HANDOVER_MARGIN_S - MIN_ANSWER_TIME_S + 1)
    reply, _, _ = make_reply(InteractionSurface(old, ephemeral=True))
    with pytest.raises(AnswerWindowClosed, match="15 minutes"):
        answer_time_limit(reply)


async def test_shutdown_ends_replies_whose_jobs_do_not_within_the_grace_time():
    replies = Replies()
    stuck = replies._make(RecordingSurface(), code_block=False)  # its job never finishes on its own
    finished = replies._make(RecordingSurface(), code_block=False)
    await finished.answer("Done.")
    started = asyncio.get_running_loop().time()
    await replies.close_all("The bot is shutting down.", timeout_s=0.05)
    assert asyncio.get_running_loop().time() - started < 1.0  # bounded, no polling
    assert stuck.outcome is Outcome.STOPPED and stuck.surface.events == [
        ("show", "The bot is shutting down.")
    ]
    assert finished.outcome is Outcome.ANSWER
    assert not replies.open
