"""Remakes docs/bot-at-work.png, the README's picture: the bot answering a describe, an OCR as Markdown and a
compare in a simulated Discord server (simcord), shown by simcord's preview and photographed by headless
Chromium. The bot is the real one (its cogs, intake, replies and formatting); the pictures are drawn here.

    python scripts/readme_picture.py            # example answers, labelled as such
    python scripts/readme_picture.py --model microsoft/Phi-3.5-vision-instruct  # the model's own

Without ``--model`` the answers are example texts written for these pictures (the picture says so); with
it the real model answers (it must be downloaded; a GPU makes it quick). Needs Chromium (``apt-get install
chromium``) and the test tools (``make test`` installs them). Run it again when the replies' look changes.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import io
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

OUTPUT = ROOT / "docs" / "bot-at-work.png"
WIDTH, HEIGHT = 1000, 1700
SIDE = (240, 160)  # the drawn pictures, small enough that all three answers fit in one window
EXAMPLE_ANSWERS = (
    "A red ball rests on short green grass under a clear blue sky, with a yellow sun in the top right "
    "corner. Nothing else is in the picture: no people, no buildings, no trees.",
    "## Receipt\n\n| Item | Qty | Price |\n| --- | --- | --- |\n| Coffee | 2 | 6.00 |\n"
    "| Bagel | 1 | 3.50 |\n\n**Total: 9.50**",
    "Both images show a ball on grass under a blue sky. Image 1 has a red ball and a sun in the corner; "
    "Image 2 has a blue ball, no sun, and the ball sits further to the left.",
)


def font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    for name in ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default()


def png(picture: Image.Image) -> bytes:
    out = io.BytesIO()
    picture.save(out, "PNG")
    return out.getvalue()


def ball_picture(color: str, x: int, sun: bool) -> bytes:
    picture = Image.new("RGB", (480, 320), (135, 195, 245))
    draw = ImageDraw.Draw(picture)
    draw.rectangle((0, 220, 480, 320), fill=(80, 170, 70))
    if sun:
        draw.ellipse((400, 20, 460, 80), fill=(250, 215, 60))
    draw.ellipse((x, 170, x + 80, 250), fill=color)
    return png(picture.resize(SIDE))


def receipt_picture() -> bytes:
    picture = Image.new("RGB", (360, 260), "white")
    draw = ImageDraw.Draw(picture)
    lines = ["RECEIPT", "", "Coffee    x2    6.00", "Bagel     x1    3.50", "", "TOTAL           9.50"]
    for row, line in enumerate(lines):
        draw.text((30, 20 + row * 36), line, fill="black", font=font(22))
    return png(picture.resize((SIDE[0], SIDE[0] * 260 // 360)))


def label(path: Path, text: str) -> None:
    """A band along the top of the picture that says what it is."""
    shot = Image.open(path).convert("RGB")
    band = 44
    out = Image.new("RGB", (shot.width, shot.height + band), (32, 34, 37))
    out.paste(shot, (0, band))
    ImageDraw.Draw(out).text((16, 12), text, fill=(220, 221, 222), font=font(17))
    out.save(path, optimize=True)


async def run(args: argparse.Namespace) -> int:
    """Make the picture; returns how many answers the bot showed (three, when all went well)."""
    import simcord

    from bot.app import create_bot
    from tests.conftest import make_settings
    from tests.fakes import FakeEngine, SimcordCdnFetcher

    if args.model:
        from inference import EngineConfig, LocalEngine

        engine: object = LocalEngine(EngineConfig(model_id=args.model, max_new_tokens=200))
    else:
        engine = FakeEngine()
        engine.answer_next(*EXAMPLE_ANSWERS)
    bot = None
    fetcher = SimcordCdnFetcher(lambda: bot.http)
    bot = create_bot(make_settings(), engine, fetcher=fetcher)
    env = simcord.Env(bot, settle_timeout=3600)
    env.backend.bot_user.name = "Phi-3-vision"
    await env.start()
    try:
        guild = env.create_guild("Photo Club")
        channel = guild.create_text_channel("pictures")
        alice = guild.add_member(env.create_user("alice"))
        await alice.send(channel, "!describe", attachments=[("ball.png", ball_picture("red", 200, True))])
        await alice.send(channel, "!ocr md", attachments=[("receipt.png", receipt_picture())])
        await alice.send(
            channel,
            "!compare",
            attachments=[
                ("one.png", ball_picture("red", 200, True)),
                ("two.png", ball_picture("blue", 60, False)),
            ],
        )
        answers = [message for message in channel.history() if message.author.bot and message.components]
        async with env.preview(
            channel,
            viewers=[alice],
            layout="channel",
            display="fixed",
            width=WIDTH - 260,
            height=HEIGHT - 120,
        ) as preview:
            await asyncio.to_thread(photograph, preview.url, args.output)
    finally:
        await env.shutdown()
        await bot.close()
    whose = "the model's own answers" if args.model else "example answers written for these pictures"
    day = datetime.date.today().isoformat()
    label(args.output, f"A simulated Discord server (simcord), the real bot, {whose}. {day}")
    return len(answers)


def photograph(url: str, output: Path) -> None:
    chromium = next(
        (shutil.which(name) for name in ("chromium", "chromium-browser") if shutil.which(name)), None
    )
    if chromium is None:
        raise SystemExit("Chromium is needed: apt-get install chromium")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                f"--window-size={WIDTH},{HEIGHT}",
                "--virtual-time-budget=20000",
                f"--screenshot={output}",
                url,
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="a Phi-3-vision checkpoint to answer with (default: example answers)")
    parser.add_argument("--output", type=Path, default=OUTPUT, help=f"where the PNG goes (default {OUTPUT})")
    answers = asyncio.run(run(parser.parse_args()))
    if answers != 3:
        raise SystemExit(f"The bot showed {answers} answers instead of 3: look at the picture")


if __name__ == "__main__":
    main()
