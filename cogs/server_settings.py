"""/settings: each server's admins (Manage Server) choose how the bot behaves in their server.

Every reply is private to the admin; every change is kept in the database with who made it
(bot/server_settings.py) and takes effect at once. The owner's limits are explained, not silently
applied: asking for a shorter cooldown than the owner allows is refused with the owner's figure.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.errors import Denied
from bot.i18n import render
from bot.server_settings import ASKERS_LANGUAGE, ServerChoices
from bot.settings import Settings
from bot.text import N_, T, Text

if TYPE_CHECKING:
    from bot.app import VisionBot

MANAGE_SERVER_TEXT = N_("Only members who may manage this server can change the bot's settings here.")
ALT_TEXT_NEEDS_CONTENT_TEXT = N_(
    "Automatic alt text needs Discord's Message Content intent, which this bot runs without, so it cannot "
    "see the pictures posted in a channel. The bot's owner can turn it on (Developer Portal → Bot → Message "
    "Content, and a COMMAND_PREFIX)."
)
DEFAULT = "default"
DEFAULT_MARK = T(" *(default)*")
MAX_JOBS_CHOICE = 10
MAX_COOLDOWN_S = 3600


def _channels(ids: Iterable[int]) -> str:
    return ", ".join(f"<#{channel_id}>" for channel_id in sorted(ids))


def _roles(ids: Iterable[int]) -> str:
    return ", ".join(f"<@&{role_id}>" for role_id in sorted(ids))


def describe_settings(settings: Settings, choices: ServerChoices) -> list[Text]:
    """The settings in force in a server, each marked as the server's choice or the owner's default."""

    def mark(chosen: object) -> object:
        return "" if chosen is not None else DEFAULT_MARK

    if choices.channel_ids:
        channels: object = _channels(choices.channel_ids)
    elif settings.allowed_channel_ids:
        channels = T("only {channels} (the owner's choice)", channels=_channels(settings.allowed_channel_ids))
    else:
        channels = T("any channel")
    role_ids = settings.ocr_role_ids if choices.ocr_role_ids is None else choices.ocr_role_ids
    ocr_public = settings.ocr_public if choices.ocr_public is None else choices.ocr_public
    return [
        T("**The bot's settings in this server** (*default*: the bot owner's setting)"),
        T("- Answers in: {channels}{default}", channels=channels, default=mark(choices.channel_ids)),
        T(
            "- OCR allowed for: {roles}{default}",
            roles=_roles(role_ids) if role_ids else T("everyone"),
            default=mark(choices.ocr_role_ids),
        ),
        T(
            "- OCR answers: {visibility}{default}",
            visibility=T("public") if ocr_public else T("private"),
            default=mark(choices.ocr_public),
        ),
        T(
            "- Cooldown between requests: {seconds:g} s{default} (the owner's minimum: {minimum:g} s)",
            seconds=max(settings.user_cooldown_s, choices.cooldown_s or 0.0),
            minimum=settings.user_cooldown_s,
            default=mark(choices.cooldown_s),
        ),
        T(
            "- Requests at once per person: {count}{default} (the owner's maximum: {maximum})",
            count=min(settings.max_jobs_per_user, choices.jobs_per_person or settings.max_jobs_per_user),
            maximum=settings.max_jobs_per_user,
            default=mark(choices.jobs_per_person),
        ),
        T(
            "- Automatic alt text in: {channels}",
            channels=_channels(choices.alt_text_channel_ids) if choices.alt_text_channel_ids else T("off"),
        ),
        T(
            "- Descriptions and comparisons in: {language}{default}",
            language=T("each asker's Discord language")
            if choices.answer_language == ASKERS_LANGUAGE
            else T("English"),
            default=mark(choices.answer_language),
        ),
        T(
            "- Threads for follow-ups: {state}{default}",
            state=T("each public answer opens one") if choices.answer_threads else T("off"),
            default=mark(choices.answer_threads),
        ),
        T("- Images per request: up to {count} (the owner's setting)", count=settings.max_images),
    ]


@app_commands.guild_only()
@app_commands.default_permissions(manage_guild=True)
class ServerSettingsCog(
    commands.GroupCog, group_name="settings", group_description="The bot's settings in this server"
):
    channels = app_commands.Group(name="channels", description="The channels where the bot answers")
    ocr_roles = app_commands.Group(name="ocr-roles", description="Who may read text out of images (OCR)")
    alt_text = app_commands.Group(
        name="alt-text", description="Channels where posted images get alt text automatically"
    )

    def __init__(self, bot: VisionBot) -> None:
        self.bot = bot
        super().__init__()

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        # Discord hides the command from others by default, but a server can change who sees it.
        if interaction.guild is None or not interaction.permissions.manage_guild:
            raise app_commands.CheckFailure(MANAGE_SERVER_TEXT)  # a check's refusal reaches the error handler
        return True

    # -- helpers -------------------------------------------------------------------------------
    def _choices(self, interaction: discord.Interaction) -> ServerChoices:
        return self.bot.server_settings.choices(interaction.guild_id)

    async def _change(self, interaction: discord.Interaction, name: str, value: object, done: Text) -> None:
        assert interaction.guild_id is not None
        await self.bot.server_settings.change(interaction.guild_id, name, value, by=interaction.user.id)
        await interaction.response.send_message(render(done, interaction.locale), ephemeral=True)

    async def _change_ids(
        self, interaction: discord.Interaction, name: str, item: int, *, add: bool, done: Text
    ) -> None:
        current = getattr(self._choices(interaction), name) or frozenset()
        changed = current | {item} if add else current - {item}
        await self._change(interaction, name, changed or None, done)

    def _check_owner_allows(self, channel: discord.abc.GuildChannel) -> None:
        owner = self.bot.settings.allowed_channel_ids
        if owner and channel.id not in owner:
            raise Denied(T("The bot's owner only lets it answer in {channels}.", channels=_channels(owner)))

    # -- /settings show, reset ----------------------------------------------------------------------
    @app_commands.command(name="show", description="Show the bot's settings in this server")
    async def show(self, interaction: discord.Interaction) -> None:
        lines = describe_settings(self.bot.settings, self._choices(interaction))
        text = "\n".join(render(line, interaction.locale) for line in lines)
        await interaction.response.send_message(text, ephemeral=True)

    @app_commands.command(name="reset", description="Put every setting back to the bot owner's defaults")
    async def reset(self, interaction: discord.Interaction) -> None:
        assert interaction.guild_id is not None
        await self.bot.server_settings.reset(interaction.guild_id, by=interaction.user.id)
        text = render(T("Every setting is back to the bot owner's defaults."), interaction.locale)
        await interaction.response.send_message(text, ephemeral=True)

    # -- channels ------------------------------------------------------------------------------
    @channels.command(name="add", description="Answer in this channel (then only in the listed ones)")
    @app_commands.describe(channel="A channel where the bot should answer")
    async def channels_add(self, interaction: discord.Interaction, channel: discord.TextChannel) -> None:
        self._check_owner_allows(channel)
        await self._change_ids(
            interaction,
            "channel_ids",
            channel.id,
            add=True,
            done=T(
                "I now answer in {channel} (and the other listed channels only).", channel=channel.mention
            ),
        )

    @channels.command(name="remove", description="Stop answering in this channel")
    @app_commands.describe(channel="A channel to take off the list")
    async def channels_remove(self, interaction: discord.Interaction, channel: discord.TextChannel) -> None:
        left = (self._choices(interaction).channel_ids or frozenset()) - {channel.id}
        done = (
            T("{channel} is off the list.", channel=channel.mention)
            if left
            else T("No channel is listed any more, so I answer in any channel again.")
        )
        await self._change_ids(interaction, "channel_ids", channel.id, add=False, done=done)

    @channels.command(name="anywhere", description="Answer in any channel again (clear the list)")
    async def channels_anywhere(self, interaction: discord.Interaction) -> None:
        await self._change(interaction, "channel_ids", None, T("I answer in any channel again."))

    # -- OCR -----------------------------------------------------------------------------------
    @ocr_roles.command(name="add", description="Let members with this role use OCR")
    @app_commands.describe(role="A role whose members may use OCR")
    async def ocr_roles_add(self, interaction: discord.Interaction, role: discord.Role) -> None:
        await self._change_ids(
            interaction,
            "ocr_role_ids",
            role.id,
            add=True,
            done=T("Members with {role} may use OCR.", role=role.mention),
        )

    @ocr_roles.command(name="remove", description="Take this role off the OCR list")
    @app_commands.describe(role="A role to take off the OCR list")
    async def ocr_roles_remove(self, interaction: discord.Interaction, role: discord.Role) -> None:
        await self._change_ids(
            interaction,
            "ocr_role_ids",
            role.id,
            add=False,
            done=T("{role} is off the OCR list.", role=role.mention),
        )

    @ocr_roles.command(name="default", description="Use the bot owner's OCR roles again")
    async def ocr_roles_default(self, interaction: discord.Interaction) -> None:
        await self._change(interaction, "ocr_role_ids", None, T("OCR follows the bot owner's roles again."))

    @app_commands.command(
        name="ocr-answers", description="Show OCR answers to everyone, or only to the asker"
    )
    @app_commands.describe(
        visibility="private: only the asker sees it; public: everyone; default: the owner's"
    )
    async def ocr_answers(
        self, interaction: discord.Interaction, visibility: Literal["private", "public", "default"]
    ) -> None:
        value = None if visibility == DEFAULT else visibility == "public"
        done = {
            "private": T("OCR answers are shown only to the person who asked."),
            "public": T("OCR answers are shown to everyone in the channel."),
            DEFAULT: T("OCR answers follow the bot owner's setting again."),
        }[visibility]
        await self._change(interaction, "ocr_public", value, done)

    @app_commands.command(
        name="answer-language", description="Describe and compare in English, or in each asker's language"
    )
    @app_commands.describe(
        language="english (default); asker: each person's Discord language (best with Phi-3.5-vision)"
    )
    async def answer_language(
        self, interaction: discord.Interaction, language: Literal["english", "asker"]
    ) -> None:
        value = ASKERS_LANGUAGE if language == "asker" else None
        done = (
            T("Descriptions and comparisons now come in each asker's Discord language.")
            if value
            else T("Descriptions and comparisons now come in English.")
        )
        await self._change(interaction, "answer_language", value, done)

    @app_commands.command(
        name="threads", description="Open a thread on each public answer for its follow-ups"
    )
    @app_commands.describe(
        state="on: each public answer opens a thread, where every message is a follow-up; off (default)"
    )
    async def threads(self, interaction: discord.Interaction, state: Literal["on", "off"]) -> None:
        value = True if state == "on" else None
        done = (
            T(
                "Each public answer now opens a thread: messages there are follow-ups, no mention needed "
                "(the bot needs the Create Public Threads permission)."
            )
            if value
            else T("Answers no longer open threads.")
        )
        await self._change(interaction, "answer_threads", value, done)

    # -- limits ----------------------------------------------------------------------------------
    @app_commands.command(name="cooldown", description="Seconds between two requests of one person")
    @app_commands.describe(seconds="Leave out to use the bot owner's setting again")
    async def cooldown(
        self,
        interaction: discord.Interaction,
        seconds: app_commands.Range[int, 0, MAX_COOLDOWN_S] | None = None,
    ) -> None:
        floor = self.bot.settings.user_cooldown_s
        if seconds is not None and seconds < floor:
            raise Denied(
                T(
                    "The bot's owner set the shortest cooldown to {floor:g} s; choose that or more.",
                    floor=floor,
                )
            )
        done = (
            T("The cooldown is now {seconds} s.", seconds=seconds)
            if seconds is not None
            else T("The cooldown is the owner's again.")
        )
        await self._change(interaction, "cooldown_s", None if seconds is None else float(seconds), done)

    @app_commands.command(name="jobs-per-person", description="Requests one person may have going at once")
    @app_commands.describe(count="Leave out to use the bot owner's setting again")
    async def jobs_per_person(
        self,
        interaction: discord.Interaction,
        count: app_commands.Range[int, 1, MAX_JOBS_CHOICE] | None = None,
    ) -> None:
        ceiling = self.bot.settings.max_jobs_per_user
        if count is not None and count > ceiling:
            raise Denied(
                T("The bot's owner allows at most {limit} requests at once per person.", limit=ceiling)
            )
        done = (
            T("Each person may now have up to {count} requests going at once.", count=count)
            if count is not None
            else T("Requests per person follow the owner's setting again.")
        )
        await self._change(interaction, "jobs_per_person", count, done)

    # -- alt text ------------------------------------------------------------------------------
    @alt_text.command(name="add", description="Describe images posted in this channel automatically")
    @app_commands.describe(channel="A channel whose images should get alt text")
    async def alt_text_add(self, interaction: discord.Interaction, channel: discord.TextChannel) -> None:
        if not self.bot.intents.message_content:
            raise Denied(ALT_TEXT_NEEDS_CONTENT_TEXT)
        self._check_owner_allows(channel)  # alt text is an answer like any other: only where the bot answers
        await self._change_ids(
            interaction,
            "alt_text_channel_ids",
            channel.id,
            add=True,
            done=T(
                "Images posted in {channel} without a description now get alt text.", channel=channel.mention
            ),
        )

    @alt_text.command(name="remove", description="Stop describing images in this channel")
    @app_commands.describe(channel="A channel to take off the alt-text list")
    async def alt_text_remove(self, interaction: discord.Interaction, channel: discord.TextChannel) -> None:
        await self._change_ids(
            interaction,
            "alt_text_channel_ids",
            channel.id,
            add=False,
            done=T("No more automatic alt text in {channel}.", channel=channel.mention),
        )


async def setup(bot: VisionBot) -> None:
    await bot.add_cog(ServerSettingsCog(bot))
