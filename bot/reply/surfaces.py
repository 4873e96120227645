"""Where one job's messages go: a prefix command's reply message, an interaction's response, or a reply
nobody asked for.

:class:`MessageSurface` posts a reply to the command, then edits it. :class:`InteractionSurface` defers the
slash command's or menu's response, then edits it and adds follow-ups; a public one moves to an ordinary
channel message before Discord's 15-minute interaction token runs out (:meth:`InteractionSurface.hand_over`).
:class:`UnaskedSurface` is automatic alt text: one silent reply to someone's message, posted only with the
answer, and nothing at all when there is no answer.

Every message a surface posts has Discord's link previews turned off (``suppress_embeds``): with the
answer's addresses already shown as code (bot.safe_text), a preview card is one more thing a picture
could put under the bot's name. A deferred interaction response cannot carry that flag; it gets its
text by editing, and that text has no live link. ``Message.edit`` would turn previews back on, so every
edit of a channel message says ``suppress=True`` again.
"""

from __future__ import annotations

import datetime
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any, Protocol

import discord

from bot.reply.calls import ReplyGone
from bot.text import N_

if TYPE_CHECKING:
    from discord.ext import commands

WORKING_TEXT = N_("Looking at it… \N{LEFT-POINTING MAGNIFYING GLASS}")
HANDED_OVER_TEXT = N_(
    "This took a while, so the answer continues in a new message below. \N{DOWNWARDS ARROW}"
)

# Discord lets an interaction's response be edited for 15 minutes; a public answer moves to an
# ordinary channel message this long before that, so the move itself is still allowed.
INTERACTION_TOKEN_S = 15 * 60
HANDOVER_MARGIN_S = 60.0


class Posted(Protocol):
    """A continuation message (``discord.Message`` and ``WebhookMessage`` are)."""

    id: int

    async def edit(self, *, content: str) -> object: ...

    async def delete(self) -> None: ...


class Surface(Protocol):
    """Where one job's messages go. What differs between a message and an interaction is said here, so
    the reply never asks which kind it has."""

    budget_keys: tuple[Hashable, ...]
    acknowledging_spends_an_edit: bool  # a message is posted; a deferral is no channel message
    private: bool  # only the asker sees these messages
    shows_only_answers: bool  # nobody asked: a failure or a stop shows nothing (it is only logged)

    def answer_window_s(self) -> float | None:
        """Seconds left to show an answer here (a private interaction's token); None: no bound."""

    def shown_privately(self, private: bool) -> bool:
        """Whether only the asker sees what is shown next (``private``: the next text asks for that)."""

    def hand_over_in_s(self) -> float | None:
        """Seconds until the answer must move to a channel message (its token expires); None: never."""

    async def hand_over(self, text: str = HANDED_OVER_TEXT) -> None:
        """Say the answer continues below; from then on it is an ordinary channel message."""

    async def acknowledge(self, view: Any = discord.utils.MISSING, text: str = WORKING_TEXT) -> None:
        """Tell Discord and the person that the bot is on it (with ``view``'s buttons, where it can)."""

    async def show(self, content: str, *, private: bool, view: Any = discord.utils.MISSING) -> None:
        """Set the main message's text (``private`` only matters when nothing was shown yet).

        ``view``: the buttons under it (None removes them; MISSING leaves them as they are).
        """

    async def add(self, content: str) -> Posted:
        """Post a continuation message."""

    async def add_file(self, content: str, file: discord.File) -> None:
        """Post a message with a file attached."""

    async def delete_main(self) -> None:
        """Remove the main message (a reply that cannot be finished leaves no half answer)."""

    async def main_message_id(self) -> int | None:
        """The id of the message showing the answer (None: nothing is showing)."""


class _ChannelPost:
    """A continuation posted as a channel message. Its edits keep link previews off: discord.py's
    ``Message.edit`` turns them back on unless told ``suppress=True`` each time (a webhook message's edit
    leaves the flag alone, so interaction follow-ups need no such care)."""

    def __init__(self, message: discord.Message) -> None:
        self.message = message
        self.id = message.id

    async def edit(self, *, content: str) -> object:
        self.message = await self.message.edit(content=content, suppress=True)
        return self.message

    async def delete(self) -> None:
        await self.message.delete()


def _with_view(view: Any) -> dict[str, Any]:
    """``view=`` for an edit, left out when there is nothing to change (None removes the buttons)."""
    return {} if view is discord.utils.MISSING else {"view": view}


def _new_view(view: Any) -> dict[str, Any]:
    """``view=`` for a new message, left out when it has no buttons."""
    return {} if view is discord.utils.MISSING or view is None else {"view": view}


class _ChannelMessage:
    """What the surfaces that post an ordinary channel message share: shown to everyone, editable for as
    long as it exists (nothing to hand over), deleted as one message. ``main`` is that message."""

    main: discord.Message | None
    private = False

    def answer_window_s(self) -> float | None:
        return None

    def shown_privately(self, private: bool) -> bool:
        return False  # a channel message is always in the channel

    def hand_over_in_s(self) -> float | None:
        return None  # a message the bot posted can be edited for as long as it exists

    async def hand_over(self, text: str = HANDED_OVER_TEXT) -> None:
        raise AssertionError("a message never needs handing over")

    async def delete_main(self) -> None:
        if self.main is not None:
            await self.main.delete()

    async def main_message_id(self) -> int | None:
        return self.main.id if self.main is not None else None


class MessageSurface(_ChannelMessage):
    """A prefix command's answer: a reply to the command message, then edits of it."""

    def __init__(self, ctx: commands.Context) -> None:
        self.ctx = ctx
        self.main: discord.Message | None = None
        self.budget_keys: tuple[Hashable, ...] = (("channel", ctx.channel.id),)
        self.acknowledging_spends_an_edit = True
        self.shows_only_answers = False

    def _reference(self) -> discord.MessageReference:
        # If the command message is gone by now, post without the reply arrow instead of failing.
        return self.ctx.message.to_reference(fail_if_not_exists=False)

    async def acknowledge(self, view: Any = discord.utils.MISSING, text: str = WORKING_TEXT) -> None:
        self.main = await self.ctx.send(
            text, reference=self._reference(), mention_author=False, suppress_embeds=True, **_new_view(view)
        )

    async def show(self, content: str, *, private: bool, view: Any = discord.utils.MISSING) -> None:
        if self.main is None:
            self.main = await self.ctx.send(
                content,
                reference=self._reference(),
                mention_author=False,
                suppress_embeds=True,
                **_new_view(view),
            )
        else:
            self.main = await self.main.edit(content=content, suppress=True, **_with_view(view))

    async def add(self, content: str) -> Posted:
        return _ChannelPost(await self.ctx.send(content, suppress_embeds=True))

    async def add_file(self, content: str, file: discord.File) -> None:
        await self.ctx.send(content, file=file, suppress_embeds=True)


class InteractionSurface:
    """A slash command's or menu's answer: the deferred response, then follow-ups.

    A public answer still running when the interaction token is about to expire moves to an
    ordinary channel message (:meth:`hand_over`); a private one cannot, so jobs bound its time.
    """

    def __init__(self, interaction: discord.Interaction, *, ephemeral: bool) -> None:
        self.interaction = interaction
        self.ephemeral = ephemeral
        self.channel_message: discord.Message | None = None
        self.response_message_id: int | None = None
        self.handed_over = False
        keys: list[Hashable] = [("interaction", interaction.id)]
        if not ephemeral:
            keys.append(("channel", interaction.channel_id))
        self.budget_keys = tuple(keys)
        self.acknowledging_spends_an_edit = False
        self.private = ephemeral
        self.shows_only_answers = False

    def answer_window_s(self) -> float | None:
        # A public answer moves to a channel message when the token runs out; a private one cannot.
        return self.seconds_left() if self.ephemeral else None

    def shown_privately(self, private: bool) -> bool:
        return self.ephemeral or (private and not self.interaction.response.is_done())

    def hand_over_in_s(self) -> float | None:
        return self.seconds_left() if self.can_hand_over() else None

    @property
    def expires_at(self) -> datetime.datetime:
        return self.interaction.created_at + datetime.timedelta(seconds=INTERACTION_TOKEN_S)

    def seconds_left(self) -> float:
        """Seconds until the response can no longer be edited, less the hand-over margin."""
        left = (self.expires_at - discord.utils.utcnow()).total_seconds()
        return left - HANDOVER_MARGIN_S

    def can_hand_over(self) -> bool:
        return not self.ephemeral and not self.handed_over and self.interaction.response.is_done()

    async def hand_over(self, text: str = HANDED_OVER_TEXT) -> None:
        """Say the answer continues below; from now on the answer is an ordinary channel message."""
        await self.interaction.edit_original_response(content=text)
        self.handed_over = True

    async def acknowledge(self, view: Any = discord.utils.MISSING, text: str = WORKING_TEXT) -> None:
        if view is discord.utils.MISSING or view is None:
            await self.interaction.response.defer(thinking=True, ephemeral=self.ephemeral)
        else:  # a deferral cannot carry buttons: the same one call, as a message with them
            await self.interaction.response.send_message(
                text, ephemeral=self.ephemeral, view=view, suppress_embeds=True
            )

    async def show(self, content: str, *, private: bool, view: Any = discord.utils.MISSING) -> None:
        if not self.interaction.response.is_done():
            await self.interaction.response.send_message(
                content, ephemeral=private or self.ephemeral, suppress_embeds=True, **_new_view(view)
            )
        elif not self.handed_over:
            shown = await self.interaction.edit_original_response(content=content, **_with_view(view))
            self.response_message_id = getattr(shown, "id", None)
        elif self.channel_message is None:
            self.channel_message = await self._channel().send(
                content, suppress_embeds=True, **_new_view(view)
            )
        else:
            self.channel_message = await self.channel_message.edit(
                content=content, suppress=True, **_with_view(view)
            )

    async def add(self, content: str) -> Posted:
        if self.handed_over:
            return _ChannelPost(await self._channel().send(content, suppress_embeds=True))
        return await self.interaction.followup.send(
            content, ephemeral=self.ephemeral, wait=True, suppress_embeds=True
        )

    async def add_file(self, content: str, file: discord.File) -> None:
        if self.handed_over:
            await self._channel().send(content, file=file, suppress_embeds=True)
        else:
            await self.interaction.followup.send(
                content, file=file, ephemeral=self.ephemeral, suppress_embeds=True
            )

    async def delete_main(self) -> None:
        if self.channel_message is not None:
            await self.channel_message.delete()
        elif self.interaction.response.is_done() and not self.handed_over:
            await self.interaction.delete_original_response()

    async def main_message_id(self) -> int | None:
        if self.channel_message is not None:
            return self.channel_message.id
        if self.handed_over:
            return None
        if self.response_message_id is not None:
            return self.response_message_id
        try:
            return (await self.interaction.original_response()).id  # one call, for answers only
        except discord.HTTPException:
            return None

    def _channel(self) -> discord.abc.Messageable:
        channel = self.interaction.channel
        if channel is None:  # pragma: no cover - Discord always sends the channel for commands
            raise ReplyGone("the interaction has no channel")
        return channel  # type: ignore[return-value]


class UnaskedSurface(_ChannelMessage):
    """A reply nobody asked for (automatic alt text): posted under someone's message once the answer is
    ready, silently and without pinging them, with ``view``'s buttons. A failure or a stop shows nothing.
    """

    def __init__(self, message: discord.Message, view: Any = discord.utils.MISSING) -> None:
        self.message = message
        self.view = view
        self.main: discord.Message | None = None
        self.budget_keys: tuple[Hashable, ...] = (("channel", message.channel.id),)
        self.acknowledging_spends_an_edit = True
        self.shows_only_answers = True

    async def acknowledge(self, view: Any = discord.utils.MISSING, text: str = WORKING_TEXT) -> None:
        raise AssertionError("nobody asked, so nobody is told the bot is on it")

    async def show(self, content: str, *, private: bool, view: Any = discord.utils.MISSING) -> None:
        if self.main is None:
            self.main = await self.message.reply(
                content,
                mention_author=False,
                silent=True,
                suppress_embeds=True,
                **_new_view(self.view if view is discord.utils.MISSING else view),
            )
        else:
            self.main = await self.main.edit(content=content, suppress=True, **_with_view(view))

    async def add(self, content: str) -> Posted:
        return _ChannelPost(await self.message.channel.send(content, silent=True, suppress_embeds=True))

    async def add_file(self, content: str, file: discord.File) -> None:
        await self.message.channel.send(content, file=file, silent=True, suppress_embeds=True)
