"""Follow-up questions by replying to one of the bot's answers.

The bot remembers its recent answers (bounded, in memory): for each, the message that shows it, the
task, the images' sources and the conversation so far. A prefix command (or ``@bot command``) that
replies to such a message asks a follow-up: the same images, the earlier turns, the new question.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from bot.errors import UserFacingError
from bot.images import ImageSource
from inference import Task, Turn

REMEMBERED_ANSWERS = 2_000
FORGOTTEN_TEXT = (
    "I no longer remember that conversation (I keep recent ones until I restart). "
    "Start a new one with the image."
)
QUESTION_NEEDED_TEXT = "Ask a question to follow up, e.g. `!describe what does the sign say?`"


@dataclass(frozen=True)
class Answered:
    """A conversation as it stands after one of the bot's answers."""

    task: Task
    sources: tuple[ImageSource, ...]
    turns: tuple[Turn, ...]  # every exchange so far, this answer's included
    asker_id: int


class Conversations:
    """The bot's recent answers by the id of the message that shows them; the oldest are forgotten first."""

    def __init__(self, size: int = REMEMBERED_ANSWERS) -> None:
        self.size = size
        self._answers: OrderedDict[int, Answered] = OrderedDict()

    def __len__(self) -> int:
        return len(self._answers)

    def remember(self, message_id: int, answered: Answered) -> None:
        self._answers[message_id] = answered
        self._answers.move_to_end(message_id)
        while len(self._answers) > self.size:
            self._answers.popitem(last=False)

    def recall(self, message_id: int) -> Answered:
        """The conversation an answer belongs to, or :class:`UserFacingError` if it was forgotten."""
        answered = self._answers.get(message_id)
        if answered is None:
            raise UserFacingError(FORGOTTEN_TEXT)
        return answered
