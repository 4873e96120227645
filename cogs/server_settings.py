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
from bot.server_settings import ServerChoices
from bot.settings import Settings

if TYPE_CHECKING:
    from bot.app import VisionBot

MANAGE_SERVER_TEXT = "Only members who may manage this server can change the bot's settings here."
DEFAULT = "default"
MAX_JOBS_CHOICE = 10
MAX_COOLDOWN_S = 3600


def _channels(ids: Iterable[int]) -> str:
    return ", ".join(f"<#{channel_id}>" for channel_id in sorted(ids))


def _roles(ids: Iterable[int]) -> str:
    return ", ".join(f"<@&{role_id}>" for role_id in sorted(ids))


def describe_settings(settings: Settings, choices: ServerChoices) -> str:
    """The settings in force in a server, each marked as the server's choice or the owner's default."""

    def mark(chosen: object) -> str:
        return "" if chosen is not None else " *(default)*"

    if choices.channel_ids:
        channels = _channels(choices.channel_ids)
    elif settings.allowed_channel_ids:
        channels = f"only {_channels(settings.allowed_channel_ids)} (the owner's choice)"
    else:
        channels = "any channel"
    role_ids = settings.ocr_role_ids if choices.ocr_role_ids is None else choices.ocr_role_ids
    ocr_public = settings.ocr_public if choices.ocr_public is None else choices.ocr_public
    cooldown = max(settings.user_cooldown_s, choices.cooldown_s or 0.0)
    jobs = min(settings.max_jobs_per_user, choices.jobs_per_person or settings.max_jobs_per_user)
    alt_text = _channels(choices.alt_text_channel_ids) if choices.alt_text_channel_ids else "off"
    return "\n".join(
        [
            "**The bot's settings in this server** (*default*: the bot owner's setting)",
            f"- Answers in: {channels}{mark(choices.channel_ids)}",
            f"- OCR allowed for: {_roles(role_ids) if role_ids else 'everyone'}{mark(choices.ocr_role_ids)}",
            f"- OCR answers: {'public' if ocr_public else 'private'}{mark(choices.ocr_public)}",
            f"- Cooldown between requests: {cooldown:g} s{mark(choices.cooldown_s)}"
            f" (the owner's minimum: {settings.user_cooldown_s:g} s)",
            f"- Requests at once per person: {jobs}{mark(choices.jobs_per_person)}"
            f" (the owner's maximum: {settings.max_jobs_per_user})",
            f"- Automatic alt text in: {alt_text}",
            f"- Images per request: up to {settings.max_images} (the owner's setting)",
        ]
    )


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

    async def _change(self, interaction: discord.Interaction, name: str, value: object, done: str) -> None:
        assert interaction.guild_id is not None
        await self.bot.server_settings.change(interaction.guild_id, name, value, by=interaction.user.id)
        await interaction.response.send_message(done, ephemeral=True)

    async def _change_ids(
        self, interaction: discord.Interaction, name: str, item: int, *, add: bool, done: str
    ) -> None:
        current = getattr(self._choices(interaction), name) or frozenset()
        changed = current | {item} if add else current - {item}
        await self._change(interaction, name, changed or None, done)

    # -- /settings show, reset ----------------------------------------------------------------------
    @app_commands.command(name="show", description="Show the bot's settings in this server")
    async def show(self, interaction: discord.Interaction) -> None:
        text = describe_settings(self.bot.settings, self._choices(interaction))
        await interaction.response.send_message(text, ephemeral=True)

    @app_commands.command(name="reset", description="Put every setting back to the bot owner's defaults")
    async def reset(self, interaction: discord.Interaction) -> None:
        assert interaction.guild_id is not None
        await self.bot.server_settings.reset(interaction.guild_id, by=interaction.user.id)
        await interaction.response.send_message(
            "Every setting is back to the bot owner's defaults.", ephemeral=True
        )

    # -- channels ------------------------------------------------------------------------------
    @channels.command(name="add", description="Answer in this channel (then only in the listed ones)")
    @app_commands.describe(channel="A channel where the bot should answer")
    async def channels_add(self, interaction: discord.Interaction, channel: discord.TextChannel) -> None:
        owner = self.bot.settings.allowed_channel_ids
        if owner and channel.id not in owner:
            raise Denied(f"The bot's owner only lets it answer in {_channels(owner)}.")
        await self._change_ids(
            interaction,
            "channel_ids",
            channel.id,
            add=True,
            done=f"I now answer in {channel.mention} (and the other listed channels only).",
        )

    @channels.command(name="remove", description="Stop answering in this channel")
    @app_commands.describe(channel="A channel to take off the list")
    async def channels_remove(self, interaction: discord.Interaction, channel: discord.TextChannel) -> None:
        left = (self._choices(interaction).channel_ids or frozenset()) - {channel.id}
        done = (
            f"{channel.mention} is off the list."
            if left
            else "No channel is listed any more, so I answer in any channel again."
        )
        await self._change_ids(interaction, "channel_ids", channel.id, add=False, done=done)

    @channels.command(name="anywhere", description="Answer in any channel again (clear the list)")
    async def channels_anywhere(self, interaction: discord.Interaction) -> None:
        await self._change(interaction, "channel_ids", None, "I answer in any channel again.")

    # -- OCR -----------------------------------------------------------------------------------
    @ocr_roles.command(name="add", description="Let members with this role use OCR")
    async def ocr_roles_add(self, interaction: discord.Interaction, role: discord.Role) -> None:
        await self._change_ids(
            interaction, "ocr_role_ids", role.id, add=True, done=f"Members with {role.mention} may use OCR."
        )

    @ocr_roles.command(name="remove", description="Take this role off the OCR list")
    async def ocr_roles_remove(self, interaction: discord.Interaction, role: discord.Role) -> None:
        await self._change_ids(
            interaction, "ocr_role_ids", role.id, add=False, done=f"{role.mention} is off the OCR list."
        )

    @ocr_roles.command(name="default", description="Use the bot owner's OCR roles again")
    async def ocr_roles_default(self, interaction: discord.Interaction) -> None:
        await self._change(interaction, "ocr_role_ids", None, "OCR follows the bot owner's roles again.")

    @app_commands.command(
        name="ocr-answers", description="Show OCR answers to everyone, or only to the asker"
    )
    async def ocr_answers(
        self, interaction: discord.Interaction, visibility: Literal["private", "public", "default"]
    ) -> None:
        value = None if visibility == DEFAULT else visibility == "public"
        shown = {"private": "only to the person who asked", "public": "to everyone in the channel"}
        done = (
            "OCR answers follow the bot owner's setting again."
            if value is None
            else f"OCR answers are shown {shown[visibility]}."
        )
        await self._change(interaction, "ocr_public", value, done)

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
                f"The bot's owner set the shortest cooldown to {floor:g} s; choose {floor:g} or more."
            )
        done = (
            f"The cooldown is now {seconds} s."
            if seconds is not None
            else "The cooldown is the owner's again."
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
            raise Denied(f"The bot's owner allows at most {ceiling} requests at once per person.")
        done = (
            f"Each person may now have {count} request(s) going at once."
            if count is not None
            else "Requests per person follow the owner's setting again."
        )
        await self._change(interaction, "jobs_per_person", count, done)

    # -- alt text ------------------------------------------------------------------------------
    @alt_text.command(name="add", description="Describe images posted in this channel automatically")
    async def alt_text_add(self, interaction: discord.Interaction, channel: discord.TextChannel) -> None:
        await self._change_ids(
            interaction,
            "alt_text_channel_ids",
            channel.id,
            add=True,
            done=f"Images posted in {channel.mention} without a description now get alt text.",
        )

    @alt_text.command(name="remove", description="Stop describing images in this channel")
    async def alt_text_remove(self, interaction: discord.Interaction, channel: discord.TextChannel) -> None:
        await self._change_ids(
            interaction,
            "alt_text_channel_ids",
            channel.id,
            add=False,
            done=f"No more automatic alt text in {channel.mention}.",
        )


async def setup(bot: VisionBot) -> None:
    await bot.add_cog(ServerSettingsCog(bot))
