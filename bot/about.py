"""What the bot says of itself: its version, and the links that add it to a server or to someone's account."""

from __future__ import annotations

from importlib import metadata

import discord

DISTRIBUTION = "phi3v-discord-bot"
# What the bot needs in a server: to see channels, read the message a request replies to, answer (in threads
# too), open a thread on an answer (where a server chose answer threads) and attach a file when an answer is
# too long for four messages.
PERMISSIONS = discord.Permissions(
    view_channel=True,
    send_messages=True,
    send_messages_in_threads=True,
    create_public_threads=True,
    read_message_history=True,
    attach_files=True,
)


def version() -> str:
    """The installed version (``pyproject.toml``), or ``unknown`` where the package is not installed."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown"


def server_invite_url(client_id: int | str) -> str:
    """The link that adds the bot to a server, with its commands and the permissions it needs."""
    scopes = ("bot", "applications.commands")
    return discord.utils.oauth_url(client_id, permissions=PERMISSIONS, scopes=scopes)


def user_install_url(client_id: int | str) -> str:
    """The link that adds the bot's commands to someone's own account (User Install, when the Developer
    Portal allows it): they then work in any server and in DMs, answered privately."""
    return discord.utils.oauth_url(client_id, scopes=("applications.commands",)) + "&integration_type=1"
