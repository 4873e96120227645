"""The Discord side: settings, image intake, limits, replies and the bot itself (``bot.app``)."""
