"""Automatic alt text in the channels a server chose, and /alttext for people to opt out.

An image posted there without a description gets a short reply for people who cannot see it:
written at a lower priority than anyone's command (the engine's background class), never pinging
anyone, marked as machine-written, with a "More" button that describes the image in full to whoever
presses it (privately). It goes through the bot's replies like any answer (the channel's edit budget,
shutdown, the owner's figures), on a surface that shows nothing when describing fails. The rules themselves
are in bot/alt_text.py.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.alt_text import (
    ALT_TEXT_TOKENS,
    ChannelRate,
    alt_text_message,
    images_needing_alt_text,
    tidy_alt_text,
)
from bot.error_replies import reports_errors
from bot.errors import Denied, UserFacingError, explain
from bot.gather import refresh_sources, source_from_attachment
from bot.i18n import render
from bot.images import ImageSource, load_images
from bot.jobs import answer_interaction, stoppable
from bot.limits import JobLimiter, Requester
from bot.reply import Outcome, Reply
from bot.task_cog import CONTEXTS, INSTALLS
from bot.text import N_, T
from inference import InferenceError, Priority, Request, Task

if TYPE_CHECKING:
    from bot.app import VisionBot

log = logging.getLogger(__name__)

MORE_LABEL = N_("More")
OPTED_OUT_TEXT = N_(
    "Done: I won't describe your images by myself any more, in any server. `/alttext optin` undoes it."
)
OPTED_IN_TEXT = N_("Done: in channels where a server turned it on, I describe your images again.")
MORE_TEMPLATE = r"phi3v:alt-more:(?P<channel>\d+):(?P<message>\d+):(?P<attachment>\d+)"


class MoreButton(discord.ui.DynamicItem[discord.ui.Button], template=MORE_TEMPLATE):
    """A full description of one image, shown only to the person who pressed it."""

    def __init__(self, channel_id: int, message_id: int, attachment_id: int, label: str = MORE_LABEL) -> None:
        # ``label`` is already in the server's language (any label matches the same custom id).
        self.source = ImageSource(
            filename="image",
            url="",
            channel_id=channel_id,
            message_id=message_id,
            attachment_id=attachment_id,
        )
        super().__init__(
            discord.ui.Button(
                label=label,
                style=discord.ButtonStyle.secondary,
                custom_id=f"phi3v:alt-more:{channel_id}:{message_id}:{attachment_id}",
            )
        )

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> MoreButton:
        return cls(int(match["channel"]), int(match["message"]), int(match["attachment"]))

    @reports_errors
    async def callback(self, interaction: discord.Interaction) -> None:
        bot: VisionBot = interaction.client  # type: ignore[assignment]
        # The image is read again from its message (or the person hears that it was deleted).
        sources = await refresh_sources(bot, [self.source], bot.settings.cdn_hosts)
        await answer_interaction(interaction, Task.DESCRIBE, sources, private=True)


def more_buttons(
    message: discord.Message, attachments: list[discord.Attachment], locale: discord.Locale | None
) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for number, attachment in enumerate(attachments, start=1):
        label = render(
            MORE_LABEL if len(attachments) == 1 else T("More about image {number}", number=number), locale
        )
        view.add_item(MoreButton(message.channel.id, message.id, attachment.id, label))
    view.stop()  # not kept in memory: clicks find MoreButton by its custom id
    return view


class AltText(commands.Cog):
    alttext = app_commands.Group(
        name="alttext",
        description="Automatic alt text for images",
        allowed_installs=INSTALLS,
        allowed_contexts=CONTEXTS,
    )

    def __init__(self, bot: VisionBot) -> None:
        self.bot = bot
        self.rate = ChannelRate()
        # Each poster's cooldown and jobs at once, as the owner and the server set them for commands; kept
        # apart, so the alt text nobody asked for never delays a person's own command.
        self.limiter = JobLimiter.from_settings(bot.settings)

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(MoreButton)

    async def cog_unload(self) -> None:
        self.bot.remove_dynamic_items(MoreButton)

    @alttext.command(name="optout", description="Never describe my images by yourself (in any server)")
    async def opt_out(self, interaction: discord.Interaction) -> None:
        await self.bot.alt_text_opt_outs.set(interaction.user.id, True)
        await interaction.response.send_message(render(OPTED_OUT_TEXT, interaction.locale), ephemeral=True)

    @alttext.command(name="optin", description="Describe my images again where a server turned it on")
    async def opt_in(self, interaction: discord.Interaction) -> None:
        await self.bot.alt_text_opt_outs.set(interaction.user.id, False)
        await interaction.response.send_message(render(OPTED_IN_TEXT, interaction.locale), ephemeral=True)

    async def _wanted(self, message: discord.Message) -> list[discord.Attachment]:
        """The images of this message that should get alt text (none: leave it alone), before the limits on
        how often: the poster's and the channel's."""
        bot = self.bot
        if message.author.bot or message.guild is None or not bot.intents.message_content:
            return []  # without Message Content, Discord shows the bot no picture of a message to it
        policy = bot.policy(message.guild.id)
        channels = policy.alt_text_channel_ids
        parent_id = getattr(message.channel, "parent_id", None)
        if message.channel.id not in channels and parent_id not in channels:
            return []
        try:  # the owner's servers and channels, and the server's own channel list, as for any request
            policy.access.check(Requester.of(message.author, message.channel, message.guild), Task.ALT_TEXT)
        except Denied:
            return []
        images = images_needing_alt_text(message.attachments)[: bot.settings.max_images]
        if not images:
            return []
        user = bot.user
        if (await bot.get_context(message)).command is not None or (user and user in message.mentions):
            return []  # a command (or a question to the bot) about the image: it gets that answer instead
        if await bot.alt_text_opt_outs.contains(message.author.id):
            return []
        return images

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        images = await self._wanted(message)
        if not images:
            return
        assert message.guild is not None  # _wanted leaves DMs alone
        policy = self.bot.policy(message.guild.id)
        try:  # the poster's cooldown and jobs at once, counted apart from the commands they run themselves
            self.limiter.admit(
                message.author.id, cooldown_s=policy.cooldown_s, max_jobs=policy.jobs_per_person
            )
        except Denied as refused:
            log.info("Alt text: skipped, the poster's limit holds (%s)", type(refused).__name__)
            return
        try:
            allowed = self.rate.take(message.channel.id, len(images))
            if allowed < len(images):
                log.info("Alt text: %d image(s) skipped, the channel's rate is spent", len(images) - allowed)
            if allowed:
                await self._answer(message, images[:allowed])
        finally:
            self.limiter.release(message.author.id)

    async def _answer(self, message: discord.Message, images: list[discord.Attachment]) -> None:
        locale = message.guild.preferred_locale if message.guild else None  # a public message
        reply = self.bot.replies.for_unasked(message, view=more_buttons(message, images, locale))
        reply.task = Task.ALT_TEXT.value
        # Deleting the picture's message stops its alt text, like any job; shutdown ends it with the rest.
        await stoppable(self.bot, message.id, reply, self._write(message, images, reply))

    async def _write(self, message: discord.Message, images: list[discord.Attachment], reply: Reply) -> None:
        """Describe each image, then post the alt text through ``reply``. Nobody asked, so a failure is
        only logged (the reply shows nothing for it)."""
        descriptions = []
        for attachment in images:
            try:
                description = tidy_alt_text(await self._describe(message, attachment))
            except (UserFacingError, InferenceError) as error:
                log.info("No alt text for %s: %s", attachment.filename, error)
                explanation = explain(error)
                await reply.finish(explanation.outcome if explanation else Outcome.FAILURE, "")
                return
            if not description:
                log.info("No alt text for %s: the model wrote nothing", attachment.filename)
                await reply.finish(Outcome.FAILURE, "")
                return
            descriptions.append(description)
        await reply.answer(alt_text_message(descriptions, reply.locale))

    async def _describe(self, message: discord.Message, attachment: discord.Attachment) -> str:
        bot = self.bot
        # Its place in the background line first: when that is full, nothing is downloaded.
        group_id = message.guild.id if message.guild else None
        with bot.engine.hold_place(Priority.BACKGROUND, group_id) as place:
            [image] = await load_images(
                [source_from_attachment(attachment, message)],
                bot.image_limits,
                bot.fetcher,
                num_crops=bot.engine.picture_crops,
            )
            request = Request(
                Task.ALT_TEXT,
                (image,),
                user_id=message.author.id,
                max_new_tokens=ALT_TEXT_TOKENS,
                priority=Priority.BACKGROUND,
                group_id=group_id,
            )
            return (await bot.engine.generate(request, place=place)).text


async def setup(bot: VisionBot) -> None:
    await bot.add_cog(AltText(bot))
