"""Command extensions: thin layers that gather input and hand it to ``bot.jobs``."""
