"""The buttons under the bot's answers: "Stop" while one is written; "Ask a follow-up" and "Delete" after.

They are discord.py dynamic items: each custom id carries what its button needs (the job to stop,
who asked), and the conversation behind "Ask a follow-up" is in the database, so the buttons of old
answers keep working after a restart. The views are never kept in memory: discord.py finds the
button class from the custom id when someone clicks.

Who may press what: "Stop" and "Delete", the person who asked or a member who may manage messages
in that channel; "Ask a follow-up", anyone who can see the answer (a private answer's only viewer
is its asker).
"""

from __future__ import annotations

import contextlib
import re
from typing import TYPE_CHECKING, Any

import discord
from discord.ext import commands

from bot.conversation import Answered
from bot.error_replies import reports_errors, send_error_to_interaction
from bot.errors import Denied, UserFacingError
from bot.i18n import render
from bot.jobs import answer_interaction, requester_of, stopped_by
from bot.reply import Controls, Outcome
from bot.text import N_
from inference.prompts import MAX_QUESTION_CHARS, check_turn_count

if TYPE_CHECKING:
    from bot.app import VisionBot

STOP_LABEL = N_("Stop")
FOLLOW_UP_LABEL = N_("Ask a follow-up")
DELETE_LABEL = N_("Delete")
MODAL_TITLE = N_("Ask a follow-up")
QUESTION_LABEL = N_("Your question about the same image(s)")
QUESTION_PLACEHOLDER = N_("e.g. What does the sign on the left say?")
NOT_RUNNING_TEXT = N_("That answer is not being written any more.")
STOP_DENIED_TEXT = N_("Only the person who asked (or a moderator) can stop this answer.")
DELETE_DENIED_TEXT = N_("Only the person who asked (or a moderator) can delete this answer.")


def may_moderate(interaction: discord.Interaction) -> bool:
    """The member may manage messages where the button was pressed."""
    return bool(interaction.permissions.manage_messages)


def _finished_view(items: list[discord.ui.Item[Any]]) -> discord.ui.View:
    # Stopped at once, so discord.py does not keep it per message: clicks find the button class
    # through its custom id instead (see VisionBot's dynamic items).
    view = discord.ui.View(timeout=None)
    for item in items:
        view.add_item(item)
    view.stop()
    return view


STOP_TEMPLATE = r"phi3v:stop:(?P<job>\d+):(?P<asker>\d+)"
DELETE_TEMPLATE = r"phi3v:delete:(?P<asker>\d+)"
FOLLOW_UP_ID = "phi3v:ask"


class StopButton(discord.ui.DynamicItem[discord.ui.Button], template=STOP_TEMPLATE):
    def __init__(self, job_id: int, asker_id: int, locale: discord.Locale | None = None) -> None:
        self.job_id, self.asker_id = job_id, asker_id
        super().__init__(
            discord.ui.Button(
                label=render(STOP_LABEL, locale),
                style=discord.ButtonStyle.secondary,
                emoji="\N{BLACK SQUARE FOR STOP}",
                custom_id=f"phi3v:stop:{job_id}:{asker_id}",
            )
        )

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> StopButton:
        return cls(int(match["job"]), int(match["asker"]))

    @reports_errors
    async def callback(self, interaction: discord.Interaction) -> None:
        bot: VisionBot = interaction.client  # type: ignore[assignment]
        if interaction.user.id != self.asker_id and not may_moderate(interaction):
            raise Denied(STOP_DENIED_TEXT)
        if not bot.running_jobs.stop(self.job_id, stopped_by(interaction.user.display_name)):
            raise UserFacingError(NOT_RUNNING_TEXT)
        await interaction.response.defer()  # the answer's own message says it stopped


class FollowUpModal(discord.ui.Modal):
    def __init__(self, earlier: Answered, locale: discord.Locale | None = None) -> None:
        super().__init__(title=render(MODAL_TITLE, locale), timeout=15 * 60)
        self.earlier = earlier
        self.question: discord.ui.TextInput = discord.ui.TextInput(
            label=render(QUESTION_LABEL, locale),
            placeholder=render(QUESTION_PLACEHOLDER, locale),
            style=discord.TextStyle.paragraph,
            max_length=MAX_QUESTION_CHARS,
            custom_id="question",
        )
        self.add_item(self.question)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        earlier = self.earlier
        await answer_interaction(interaction, earlier.task, (), question=self.question.value, earlier=earlier)

    async def on_error(self, interaction: discord.Interaction, error: Exception) -> None:  # type: ignore[override]
        # (discord.py's Modal declares on_error so, without the item a View's has)
        await send_error_to_interaction(interaction, error)


class FollowUpButton(discord.ui.DynamicItem[discord.ui.Button], template=FOLLOW_UP_ID):
    def __init__(self, locale: discord.Locale | None = None) -> None:
        super().__init__(
            discord.ui.Button(
                label=render(FOLLOW_UP_LABEL, locale),
                style=discord.ButtonStyle.primary,
                emoji="\N{SPEECH BALLOON}",
                custom_id=FOLLOW_UP_ID,
            )
        )

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> FollowUpButton:
        return cls()

    @reports_errors
    async def callback(self, interaction: discord.Interaction) -> None:
        bot: VisionBot = interaction.client  # type: ignore[assignment]
        assert interaction.message is not None  # a button is always on a message
        earlier = await bot.conversations.recall(interaction.message.id)
        # Refused before the modal opens, so nobody types a question in vain.
        earlier.check_may_follow_up(interaction.user.id)
        requester = requester_of(interaction)
        bot.policy(requester.guild_id).access.check(requester, earlier.task)
        check_turn_count(len(earlier.turns) + 1)
        await interaction.response.send_modal(FollowUpModal(earlier, interaction.locale))


class DeleteButton(discord.ui.DynamicItem[discord.ui.Button], template=DELETE_TEMPLATE):
    def __init__(self, asker_id: int, locale: discord.Locale | None = None) -> None:
        self.asker_id = asker_id
        super().__init__(
            discord.ui.Button(
                label=render(DELETE_LABEL, locale),
                style=discord.ButtonStyle.secondary,
                emoji="\N{WASTEBASKET}",
                custom_id=f"phi3v:delete:{asker_id}",
            )
        )

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> DeleteButton:
        return cls(int(match["asker"]))

    @reports_errors
    async def callback(self, interaction: discord.Interaction) -> None:
        bot: VisionBot = interaction.client  # type: ignore[assignment]
        if interaction.user.id != self.asker_id and not may_moderate(interaction):
            raise Denied(DELETE_DENIED_TEXT)
        assert interaction.message is not None and interaction.channel is not None
        main_id = interaction.message.id
        message_ids = await bot.conversations.message_ids(main_id) or [main_id]
        await interaction.response.defer()
        for message_id in message_ids:
            with contextlib.suppress(discord.NotFound):  # someone deleted it already
                await interaction.channel.get_partial_message(message_id).delete()  # type: ignore[union-attr]
        await bot.conversations.forget(main_id)


def answer_controls(controls: Controls, outcome: Outcome | None) -> discord.ui.View | None:
    """The buttons under an answer: Stop while it runs; Ask a follow-up (and Delete) once answered."""
    if outcome is None:
        return _finished_view([StopButton(controls.job_id, controls.asker_id, controls.locale)])
    if outcome is not Outcome.ANSWER:
        return None
    items: list[discord.ui.Item[Any]] = [FollowUpButton(controls.locale)]
    if not controls.private:  # a private answer has Discord's own "Dismiss message"
        items.append(DeleteButton(controls.asker_id, controls.locale))
    return _finished_view(items)


class AnswerButtons(commands.Cog):
    """Puts the buttons under answers and answers their clicks."""

    ITEMS = (StopButton, FollowUpButton, DeleteButton)

    def __init__(self, bot: VisionBot) -> None:
        self.bot = bot

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(*self.ITEMS)
        self.bot.replies.render_controls = answer_controls

    async def cog_unload(self) -> None:
        self.bot.remove_dynamic_items(*self.ITEMS)
        self.bot.replies.render_controls = None


async def setup(bot: VisionBot) -> None:
    await bot.add_cog(AnswerButtons(bot))
