"""``/status`` and ``!status``, for the bot's owner: the model, the device, the line, the pace, the uptime."""

from __future__ import annotations

import datetime

import discord
from discord import app_commands
from discord.ext import commands

from bot.about import version
from bot.app import VisionBot, engine_text
from bot.text import N_

OWNER_ONLY_TEXT = N_("Only the bot's owner can see its status.")


def status_text(bot: VisionBot) -> str:
    """A few lines an owner can read at a glance."""
    stats = bot.engine_stats()
    rates = bot.metrics.rates()
    uptime = datetime.timedelta(seconds=int(bot.metrics.uptime_s()))
    lines = [f"**Model:** {engine_text(bot.settings)}"]
    if stats is not None:
        if stats.hardware:
            memory = f", {stats.memory_bytes / 1e9:.1f} GB in use" if stats.memory_bytes is not None else ""
            lines.append(f"**Device:** {stats.hardware}{memory}")
        state = "unavailable (see the log)" if stats.dead else "ready"
        lines.append(f"**Engine:** {state}; {stats.running} answering, {stats.waiting} waiting")
        lines.append(
            f"**Since start:** {stats.answers_finished:,} answers, {stats.tokens_generated:,} tokens, "
            f"{stats.out_of_memory} out of memory, {stats.step_failures} failed model steps, "
            f"{stats.prompt_tokens_reused:,} prompt tokens reused (pictures asked about again)"
        )
    minutes = max(rates.window_s / 60, 1)
    pace = f"{rates.answers_per_min:.1f} answers/min, {rates.tokens_per_s:.1f} tokens/s"
    lines.append(f"**Last {minutes:.0f} min:** {pace}")
    lines.append(f"**Up for:** {uptime}; version {version()}")
    return "\n".join(lines)


class Status(commands.Cog):
    def __init__(self, bot: VisionBot) -> None:
        self.bot = bot

    @app_commands.command(name="status", description="The bot's model, queue and pace (owner only).")
    async def status_slash(self, interaction: discord.Interaction) -> None:
        if not await self.bot.is_owner(interaction.user):
            raise app_commands.CheckFailure(OWNER_ONLY_TEXT)
        await interaction.response.send_message(status_text(self.bot), ephemeral=True)

    @commands.command(name="status", hidden=True)
    @commands.is_owner()
    async def status_prefix(self, ctx: commands.Context) -> None:
        """Owner only: the model, the queue and the pace."""
        await ctx.reply(status_text(self.bot), mention_author=False)


async def setup(bot: VisionBot) -> None:
    await bot.add_cog(Status(bot))
