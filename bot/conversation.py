"""Conversations: follow-up questions on one of the bot's answers.

Every answer the bot shows is kept in the database under the ids of the messages showing it: the
task, where its images are on Discord, every question and answer so far, who asked, and whether
it was private. Replying to such a message (``@bot <question>`` or a prefix command) or pressing its
"Ask a follow-up" button continues the conversation: the same images, the earlier turns, the new
question. Kept for :data:`KEPT_DAYS` days, so follow-ups work across restarts: older ones are removed when the
bot starts and every hour (:meth:`Conversations.prune`).

Each answer also notes the messages it came from (the one that asked, those holding its pictures): deleting
any of them, or the answer itself, forgets the conversation (:meth:`Conversations.forget_messages`), and a
person can erase every conversation they started (:meth:`Conversations.forget_asker`, ``/privacy``).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from bot.database import Database
from bot.errors import UserFacingError
from bot.images import ImageSource
from bot.text import N_, T
from inference import Task, Turn

log = logging.getLogger(__name__)

KEPT_DAYS = 30
FORGOTTEN_TEXT = T(
    "I no longer have that conversation: it is over {days} days old, or a message it came from was deleted. "
    "Start a new one with the image.",
    days=KEPT_DAYS,
)
MAX_IDS_A_STATEMENT = 500  # ids in one IN (...) list, well under SQLite's limit on parameters
QUESTION_NEEDED_TEXT = N_("Ask a question to follow up, e.g. `!describe what does the sign say?`")
NOT_YOURS_TEXT = N_("That answer was private to the person who asked, so only they can follow up on it.")


@dataclass(frozen=True)
class Answered:
    """A conversation as it stands after one of the bot's answers."""

    task: Task
    sources: tuple[ImageSource, ...]
    turns: tuple[Turn, ...]  # every exchange so far, this answer's included
    asker_id: int
    private: bool = False
    markdown: bool = False  # an OCR answer asked for as Markdown
    channel_id: int | None = None
    asked_in: int | None = None  # the message that asked (a prefix command); None for an interaction

    @property
    def origin_ids(self) -> frozenset[int]:
        """The messages this answer came from: the one that asked and those holding its pictures."""
        ids = {source.message_id for source in self.sources} | {self.asked_in}
        return frozenset(message_id for message_id in ids if message_id is not None)

    def check_may_follow_up(self, user_id: int) -> None:
        """Anyone may follow up on a public answer; only its asker on a private one."""
        if self.private and user_id != self.asker_id:
            raise UserFacingError(NOT_YOURS_TEXT)


def _sources_to_json(sources: tuple[ImageSource, ...]) -> str:
    return json.dumps([asdict(source) for source in sources])


def _sources_from_json(text: str) -> tuple[ImageSource, ...]:
    return tuple(ImageSource(**fields) for fields in json.loads(text))


def _turns_to_json(turns: tuple[Turn, ...]) -> str:
    return json.dumps([[turn.question, turn.answer] for turn in turns])


def _turns_from_json(text: str) -> tuple[Turn, ...]:
    return tuple(Turn(question, answer) for question, answer in json.loads(text))


class Conversations:
    """The bot's answers by the ids of the messages that show them, in the database."""

    def __init__(self, database: Database, *, kept_days: float = KEPT_DAYS) -> None:
        self.database = database
        self.kept_s = kept_days * 24 * 3600

    async def remember(self, message_ids: list[int], answered: Answered) -> None:
        """Keep an answer under each message showing it (the first is its main message), with the messages
        it came from.

        A failed write is logged, not raised: the answer was shown; only following up on it is lost.
        """
        if not message_ids:
            return
        main_id, now = message_ids[0], time.time()
        row = (
            main_id,
            answered.channel_id,
            answered.asker_id,
            answered.task.value,
            int(answered.private),
            int(answered.markdown),
            _sources_to_json(answered.sources),
            _turns_to_json(answered.turns),
            now,
        )
        statements: list[tuple[str, tuple]] = [
            (
                "INSERT OR REPLACE INTO answers (message_id, main_id, channel_id, asker_id, task, private, "
                "markdown, sources, turns, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (message_id, *row),
            )
            for message_id in message_ids
        ]
        statements += [
            ("INSERT INTO answer_origins (message_id, main_id) VALUES (?, ?)", (origin, main_id))
            for origin in sorted(answered.origin_ids)
        ]
        try:
            await self.database.transaction(statements)
        except sqlite3.Error:
            log.exception("Could not keep an answer for follow-ups")

    async def recall(self, message_id: int) -> Answered:
        """The conversation an answer belongs to, or :class:`UserFacingError` if it is not kept."""
        rows = await self.database.fetch_all(
            "SELECT task, sources, turns, asker_id, private, markdown, channel_id FROM answers "
            "WHERE message_id = ? AND created_at >= ?",
            (message_id, time.time() - self.kept_s),
        )
        if not rows:
            raise UserFacingError(FORGOTTEN_TEXT)
        task, sources, turns, asker_id, private, markdown, channel_id = rows[0]
        return Answered(
            task=Task(task),
            sources=_sources_from_json(sources),
            turns=_turns_from_json(turns),
            asker_id=asker_id,
            private=bool(private),
            markdown=bool(markdown),
            channel_id=channel_id,
        )

    async def latest_asked_in(self, channel_id: int) -> int | None:
        """The newest kept answer asked in this channel or thread (its first message's id), if any."""
        rows = await self.database.fetch_all(
            "SELECT main_id FROM answers WHERE channel_id = ? AND created_at >= ? "
            "ORDER BY created_at DESC LIMIT 1",
            (channel_id, time.time() - self.kept_s),
        )
        return int(rows[0][0]) if rows else None

    async def is_kept(self, message_id: int) -> bool:
        rows = await self.database.fetch_all(
            "SELECT 1 FROM answers WHERE message_id = ? AND created_at >= ?",
            (message_id, time.time() - self.kept_s),
        )
        return bool(rows)

    async def message_ids(self, main_id: int) -> list[int]:
        """Every message showing the answer whose first message is ``main_id`` (first first)."""
        rows = await self.database.fetch_all(
            "SELECT message_id FROM answers WHERE main_id = ? ORDER BY message_id", (main_id,)
        )
        return [row[0] for row in rows]

    async def forget(self, main_id: int) -> None:
        await self._forget_answers([main_id])

    async def forget_messages(self, message_ids: Iterable[int]) -> int:
        """Forget every conversation shown in, asked by, or about the pictures of these (deleted) messages;
        return how many."""
        ids = sorted(set(message_ids))
        if not ids:
            return 0
        marks = ", ".join("?" * len(ids))
        rows = await self.database.fetch_all(
            f"SELECT main_id FROM answers WHERE message_id IN ({marks}) "
            f"UNION SELECT main_id FROM answer_origins WHERE message_id IN ({marks})",
            (*ids, *ids),
        )
        return await self._forget_answers([row[0] for row in rows])

    async def forget_asker(self, user_id: int) -> int:
        """Forget every conversation this person started; return how many."""
        rows = await self.database.fetch_all(
            "SELECT DISTINCT main_id FROM answers WHERE asker_id = ?", (user_id,)
        )
        return await self._forget_answers([row[0] for row in rows])

    async def started_by(self, user_id: int) -> tuple[int, float | None]:
        """How many conversations this person started are kept, and when the oldest was (Unix time)."""
        rows = await self.database.fetch_all(
            "SELECT COUNT(DISTINCT main_id), MIN(created_at) FROM answers WHERE asker_id = ?", (user_id,)
        )
        count, oldest = rows[0]
        return int(count), oldest

    async def prune(self) -> int:
        """Forget the conversations older than :data:`KEPT_DAYS` days; return how many."""
        return await self.forget_older_than(time.time() - self.kept_s)

    async def forget_older_than(self, cutoff: float) -> int:
        rows = await self.database.fetch_all(
            "SELECT DISTINCT main_id FROM answers WHERE created_at < ?", (cutoff,)
        )
        return await self._forget_answers([row[0] for row in rows])

    async def _forget_answers(self, main_ids: list[int]) -> int:
        """Delete these answers and what notes where they came from, all or nothing."""
        statements: list[tuple[str, tuple]] = []
        for start in range(0, len(main_ids), MAX_IDS_A_STATEMENT):
            chunk = tuple(main_ids[start : start + MAX_IDS_A_STATEMENT])
            marks = ", ".join("?" * len(chunk))
            statements += [
                (f"DELETE FROM answers WHERE main_id IN ({marks})", chunk),
                (f"DELETE FROM answer_origins WHERE main_id IN ({marks})", chunk),
            ]
        if statements:
            await self.database.transaction(statements)
        return len(main_ids)
