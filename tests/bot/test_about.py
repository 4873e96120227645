"""The bot's version and the links that add it: what an owner copies from the log or from --check."""

from __future__ import annotations

import tomllib
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import discord

from bot.about import PERMISSIONS, server_invite_url, user_install_url, version

ROOT = Path(__file__).resolve().parents[2]


def test_the_version_is_the_projects():
    assert version() == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_the_server_invite_asks_for_the_commands_and_the_permissions_the_readme_names():
    url = urlsplit(server_invite_url(123456789012345678))
    query = parse_qs(url.query)
    assert (url.scheme, url.netloc, url.path) == ("https", "discord.com", "/oauth2/authorize")
    assert query["client_id"] == ["123456789012345678"]
    assert query["scope"] == ["bot applications.commands"]
    assert query["permissions"] == ["309237746688"] and "`309237746688`" in (ROOT / "README.md").read_text()
    granted = discord.Permissions(int(query["permissions"][0]))
    assert granted.send_messages and granted.attach_files and granted.read_message_history
    assert not granted.administrator and not granted.manage_messages and not granted.mention_everyone
    assert granted == PERMISSIONS


def test_the_user_install_link_adds_only_the_commands_to_an_account():
    query = parse_qs(urlsplit(user_install_url(42)).query)
    assert query == {"client_id": ["42"], "scope": ["applications.commands"], "integration_type": ["1"]}
