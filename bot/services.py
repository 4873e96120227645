"""What the code of a job needs of the running bot, as one protocol: the bot (``bot.app.VisionBot``)
satisfies it, and the modules that run jobs, refuse or reply take it instead of importing the bot class, so
nothing below the bot reaches back up to it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, cast

from bot.gather import Channels

if TYPE_CHECKING:
    import discord
    from discord import app_commands

    from bot.conversation import Conversations
    from bot.images import Fetcher, ImageLimits
    from bot.limits import JobLimiter, RefusalThrottle
    from bot.reply import Replies
    from bot.running_jobs import RunningJobs
    from bot.server_settings import ServerPolicy
    from bot.settings import Settings
    from inference import Engine


class Services(Channels, Protocol):
    settings: Settings
    engine: Engine
    limiter: JobLimiter
    refusals: RefusalThrottle
    replies: Replies
    running_jobs: RunningJobs
    conversations: Conversations
    image_limits: ImageLimits

    @property
    def intents(self) -> discord.Intents: ...

    @property
    def tree(self) -> app_commands.CommandTree: ...

    @property
    def fetcher(self) -> Fetcher: ...

    @property
    def user(self) -> discord.ClientUser | None: ...

    def policy(self, guild_id: int | None) -> ServerPolicy: ...


def services_of(client: Any) -> Services:
    """The services of the client discord.py hands a callback (``interaction.client``, ``ctx.bot``): always
    the bot, which discord.py types only as its own client class."""
    return cast("Services", client)
