"""Image helpers shared by every way images come in (the bot's intake, the CLI). PIL only."""

from __future__ import annotations

from PIL import Image

WHITE = (255, 255, 255)


def flatten_to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with any transparency composited onto white (the model was trained without alpha)."""
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    if not has_alpha:
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    background = Image.new("RGB", rgba.size, WHITE)
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background
