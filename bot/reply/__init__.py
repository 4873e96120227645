"""What people see of each job: the reply (reply.py), how it ends and what it leaves (outcomes.py), where its
messages go (surfaces.py), the edit budgets (budget.py), the Discord calls and their retries (calls.py), and
all open replies (registry.py)."""

from bot.reply.budget import CHANNEL_EDIT_BURST, CHANNEL_EDITS_PER_S, EditBudget, EditBudgets
from bot.reply.calls import FINAL_ATTEMPTS, ReplyGone, call_discord
from bot.reply.outcomes import Controls, ControlsRenderer, JobRecord, Outcome
from bot.reply.registry import REPLY_KEY, Replies
from bot.reply.reply import (
    ANSWER_FILENAME,
    EDIT_INTERVAL_S,
    MARKDOWN_FILENAME,
    MAX_MESSAGE_PARTS,
    Reply,
    long_answer_text,
    queue_text,
)
from bot.reply.surfaces import (
    HANDED_OVER_TEXT,
    HANDOVER_MARGIN_S,
    INTERACTION_TOKEN_S,
    WORKING_TEXT,
    InteractionSurface,
    MessageSurface,
    Surface,
    UnaskedSurface,
)

__all__ = [
    "ANSWER_FILENAME",
    "CHANNEL_EDITS_PER_S",
    "CHANNEL_EDIT_BURST",
    "EDIT_INTERVAL_S",
    "FINAL_ATTEMPTS",
    "HANDED_OVER_TEXT",
    "HANDOVER_MARGIN_S",
    "INTERACTION_TOKEN_S",
    "MARKDOWN_FILENAME",
    "MAX_MESSAGE_PARTS",
    "REPLY_KEY",
    "WORKING_TEXT",
    "Controls",
    "ControlsRenderer",
    "JobRecord",
    "EditBudget",
    "EditBudgets",
    "InteractionSurface",
    "MessageSurface",
    "Outcome",
    "Replies",
    "Reply",
    "ReplyGone",
    "Surface",
    "UnaskedSurface",
    "call_discord",
    "long_answer_text",
    "queue_text",
]
