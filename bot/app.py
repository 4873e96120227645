"""The bot itself: wiring of settings, engine, image intake, limits and the command extensions."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Literal

import aiohttp
import discord
from discord import app_commands
from discord.ext import commands

from bot.about import DISTRIBUTION, server_invite_url, version
from bot.alt_text import OptOuts
from bot.conversation import Conversations
from bot.database import Database
from bot.engine_errors import SHUTTING_DOWN_TEXT
from bot.error_replies import send_error_to_context, send_error_to_interaction
from bot.i18n import CatalogTranslator
from bot.images import Fetcher, HttpFetcher, ImageLimits
from bot.jobs import STOPPED_BY_DELETE_TEXT, answer_follow_up_mention, answer_in_thread
from bot.limits import AccessPolicy, JobLimiter, RefusalThrottle
from bot.metrics import Metrics
from bot.reply import Replies
from bot.running_jobs import RunningJobs
from bot.server_settings import ServerPolicy, ServerSettings, server_policy
from bot.settings import DOWNLOAD_TIMEOUT_S, Settings
from inference import Engine, EngineStats
from inference.remote import display_url

log = logging.getLogger(__name__)

EXTENSIONS = (
    "cogs.answer_buttons",
    "cogs.describe",
    "cogs.ocr",
    "cogs.compare",
    "cogs.server_settings",
    "cogs.alt_text",
    "cogs.status",
    "cogs.privacy",
)
SHUTDOWN_GRACE_S = 5.0  # how long shutdown waits for stopped jobs to tell their users
MODEL_UNAVAILABLE_STATUS = "Model unavailable; the owner has been told"
DESCRIPTION = "Describes, reads and compares images with Phi-3-vision."


class VisionTree(app_commands.CommandTree):
    """The app command tree; every slash and context-menu failure ends in the shared handler."""

    async def on_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        await send_error_to_interaction(interaction, error)


class VisionBot(commands.Bot):
    """The bot on one gateway connection. :class:`ShardedVisionBot` is the same bot over several shards."""

    settings: Settings
    engine: Engine
    manage_engine: bool
    session: aiohttp.ClientSession | None
    _fetcher: Fetcher | None
    image_limits: ImageLimits
    access: AccessPolicy
    limiter: JobLimiter
    refusals: RefusalThrottle  # public refusals told to one person at most every 30 s
    running_jobs: RunningJobs
    replies: Replies
    metrics: Metrics
    database: Database | None
    conversations: Conversations  # from setup_hook on (it needs the database)
    server_settings: ServerSettings  # likewise
    alt_text_opt_outs: OptOuts  # likewise

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        *,
        fetcher: Fetcher | None = None,
        manage_engine: bool = True,
        **options: Any,
    ) -> None:
        # This bot never joins voice: discord.py's warnings about missing voice libraries do not concern it.
        discord.VoiceClient.warn_nacl = False
        discord.VoiceClient.warn_dave = False
        super().__init__(
            command_prefix=_prefix(settings.command_prefix),
            description=DESCRIPTION,
            intents=_intents(settings),
            tree_cls=VisionTree,
            allowed_mentions=discord.AllowedMentions.none(),
            owner_ids=set(settings.owner_ids) or None,
            **options,
        )
        self.settings = settings
        self.engine = engine
        self.manage_engine = manage_engine
        self._engine_started = False
        self.session = None
        self._fetcher = fetcher
        self.image_limits = ImageLimits(
            max_bytes=settings.max_attachment_bytes,
            max_pixels=settings.max_image_pixels,
            allowed_hosts=settings.cdn_hosts,
            download_timeout_s=DOWNLOAD_TIMEOUT_S,
        )
        self.access = AccessPolicy.from_settings(settings)
        self.limiter = JobLimiter.from_settings(settings)
        self.refusals = RefusalThrottle()
        self.running_jobs = RunningJobs()
        self.replies = Replies()
        self.database = None
        self.metrics = Metrics(self.engine_stats)
        self.replies.on_closed = self.metrics.reply_closed
        self.add_command(sync_command)
        engine.on_dead = self._engine_died

    async def setup_hook(self) -> None:
        # The database first: a damaged file stops the start in seconds, not after the model loaded.
        log.info("%s %s", DISTRIBUTION, version())
        self.database = await Database.open(self.settings.database_path)
        log.info("Database: %s", self.settings.database_path)
        self.conversations = Conversations(self.database)
        self.server_settings = ServerSettings(self.database)
        await self.server_settings.load()
        self.alt_text_opt_outs = OptOuts(self.database)
        self.session = aiohttp.ClientSession()
        if self._fetcher is None:
            self._fetcher = HttpFetcher(self.session, timeout_s=DOWNLOAD_TIMEOUT_S)
        if self.settings.sharded:
            log.info("Sharded: %s", _shard_text(self.settings.shard_count, self.settings.shard_ids))
        if self.settings.metrics_port is not None:
            self.metrics.serve(self.settings.metrics_port, self.settings.metrics_host)
        if self.manage_engine:
            log.info("Starting the inference engine (%s)…", engine_text(self.settings))
            await self.engine.start()
            self._engine_started = True
        # Command names and descriptions in each language Discord shows (bot/locales).
        await self.tree.set_translator(CatalogTranslator())
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        if self.settings.sync_commands:
            await sync_app_commands(self, self.settings.dev_guild_id)

    async def close(self) -> None:
        """Stop the engine first, so people whose answers were cut short are told so, then disconnect."""
        try:
            if self._engine_started:
                self._engine_started = False
                await self.engine.stop()  # open requests end with "the bot is shutting down"
            # Every open answer ends as "stopped" before the connection goes: their jobs write it,
            # or, for those that do not within the grace time, the shutdown does.
            await self.replies.close_all(SHUTTING_DOWN_TEXT, timeout_s=SHUTDOWN_GRACE_S)
            await super().close()
        finally:
            self.metrics.stop()
            if self.session is not None:
                await self.session.close()
                self.session = None
            if self.database is not None:
                await self.database.close()
                self.database = None

    @property
    def fetcher(self) -> Fetcher:
        """Downloads attachments: made when the bot starts (or given, in tests)."""
        if self._fetcher is None:
            raise RuntimeError("attachments are downloaded only once the bot has started")
        return self._fetcher

    def policy(self, guild_id: int | None) -> ServerPolicy:
        """The rules in force in a server (or in DMs): the owner's settings with the server's choices."""
        return server_policy(self.settings, self.access, self.server_settings.choices(guild_id))

    def engine_stats(self) -> EngineStats | None:
        """The engine's figures, if it keeps any (the local engine does)."""
        return self.engine.stats()

    def _engine_died(self, reason: str) -> None:
        """The engine gave up on the model: show it in the bot's status (the log already says why)."""
        if self.is_closed() or not self.is_ready():
            return  # on_ready shows it once connected
        status = discord.CustomActivity(name=MODEL_UNAVAILABLE_STATUS)
        self.loop.create_task(self.change_presence(status=discord.Status.dnd, activity=status))

    async def on_raw_message_delete(self, payload: discord.RawMessageDeleteEvent) -> None:
        if self.running_jobs.stop(payload.message_id, STOPPED_BY_DELETE_TEXT):
            log.info("Stopped a request whose message was deleted")

    async def on_message(self, message: discord.Message) -> None:
        """Commands as usual; "@bot <question>" in reply to one of the bot's answers is a follow-up, and so is
        a message in a thread opened on an answer (where a server chose answer threads)."""
        if message.author.bot:
            return
        ctx = await self.get_context(message)
        if ctx.command is None and self._mentioned_in_reply(ctx):
            await answer_follow_up_mention(ctx)
            return
        if (
            ctx.command is None
            and isinstance(message.channel, discord.Thread)
            and await answer_in_thread(ctx)
        ):
            return
        await self.invoke(ctx)

    def _mentioned_in_reply(self, ctx: commands.Context) -> bool:
        if self.user is None or ctx.message.reference is None or not ctx.prefix:
            return False
        return ctx.prefix.strip() in (f"<@{self.user.id}>", f"<@!{self.user.id}>")

    async def on_command_error(self, ctx: commands.Context, error: commands.CommandError) -> None:
        await send_error_to_context(ctx, error)

    async def on_ready(self) -> None:
        log.info(
            "Logged in as %s (%s) in %d servers", self.user, getattr(self.user, "id", "?"), len(self.guilds)
        )
        if self.application_id is not None:
            log.info("Invite link (add the bot to a server): %s", server_invite_url(self.application_id))
        if self.engine.dead_reason is not None:
            self._engine_died(self.engine.dead_reason)


class ShardedVisionBot(VisionBot, commands.AutoShardedBot):
    """The same bot over several gateway shards (Discord requires sharding from 2,500 servers).

    Everything is inherited from :class:`VisionBot`; ``commands.AutoShardedBot``
    only replaces the connection handling underneath it.
    """

    async def on_ready(self) -> None:
        await super().on_ready()
        log.info("Shards ready: %s", _shard_text(self.shard_count, self.shard_ids))


async def sync_app_commands(bot: commands.Bot, guild_id: int | None) -> int:
    """Publish slash commands and menus to one guild (fast, for development) or everywhere."""
    try:
        if guild_id is not None:
            guild = discord.Object(id=guild_id)
            bot.tree.copy_global_to(guild=guild)
            synced = await bot.tree.sync(guild=guild)
            log.info("Synced %d app commands to guild %s", len(synced), guild_id)
        else:
            synced = await bot.tree.sync()
            log.info("Synced %d app commands globally", len(synced))
    except discord.HTTPException:
        log.exception("Could not sync app commands (guild=%s); the old ones stay in place", guild_id)
        return 0
    return len(synced)


@commands.command(name="sync", hidden=True)
@commands.is_owner()
async def sync_command(ctx: commands.Context, scope: Literal["guild", "global"] = "guild") -> None:
    """Owner only: publish app commands to this server ("guild") or everywhere ("global")."""
    guild_id = ctx.guild.id if scope == "guild" and ctx.guild is not None else None
    count = await sync_app_commands(ctx.bot, guild_id)
    where = "this server" if guild_id is not None else "all servers"
    await ctx.reply(f"Synced {count} app commands to {where}.", mention_author=False)


def _prefix(prefix: str) -> Callable[[commands.Bot, discord.Message], list[str]]:
    return commands.when_mentioned_or(prefix) if prefix else commands.when_mentioned


def _shard_text(count: int | str | None, ids: Any) -> str:
    total = "as many shards as Discord recommends" if count in (None, "auto") else f"{count} shards in total"
    mine = f"this process runs shards {', '.join(map(str, ids))}" if ids else "this process runs all of them"
    return f"{total}; {mine}"


def engine_text(settings: Settings) -> str:
    if settings.backend == "remote" and settings.remote_url:
        return f"{settings.remote_model} on the model server {display_url(settings.remote_url)}"
    return settings.model_id


def _shard_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``commands.AutoShardedBot`` (none for an unsharded bot)."""
    if not settings.sharded:
        return {}
    count = settings.shard_count if isinstance(settings.shard_count, int) else None  # None: ask Discord
    return {"shard_count": count, "shard_ids": list(settings.shard_ids) or None}


def _intents(settings: Settings) -> discord.Intents:
    intents = discord.Intents.default()
    # Reading "!describe" needs message content; mentions are delivered without it.
    intents.message_content = settings.reads_every_message
    return intents


def create_bot(
    settings: Settings | None = None,
    engine: Engine | None = None,
    *,
    fetcher: Fetcher | None = None,
    manage_engine: bool = True,
) -> VisionBot:
    """Build the fully wired bot without connecting.

    ``settings`` defaults to :meth:`Settings.from_env`; ``engine`` defaults to a
    ``RemoteEngine`` when ``BACKEND=remote``, else a ``LocalEngine``, built from
    the settings. With ``manage_engine`` the bot starts the engine in
    ``setup_hook`` and stops it in ``close``; pass ``False`` when the caller
    starts and stops the engine itself. With ``SHARD_COUNT`` set the bot is a
    :class:`ShardedVisionBot`.
    """
    settings = settings if settings is not None else Settings.from_env()
    if engine is None:
        if settings.backend == "remote":
            from inference.remote import RemoteEngine  # aiohttp only, no torch

            engine = RemoteEngine(settings.remote_config())
        else:
            from inference import LocalEngine  # imports torch and transformers

            engine = LocalEngine(settings.engine_config())
    bot_class = ShardedVisionBot if settings.sharded else VisionBot
    return bot_class(
        settings, engine, fetcher=fetcher, manage_engine=manage_engine, **_shard_options(settings)
    )
