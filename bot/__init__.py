"""The Discord side: settings, image intake, limits, replies and the bot itself."""

from bot.app import VisionBot, create_bot
from bot.settings import Settings, SettingsError

__all__ = ["Settings", "SettingsError", "VisionBot", "create_bot"]
