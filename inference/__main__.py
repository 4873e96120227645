"""Command line: check a model set-up without Discord.

    python -m inference describe photo.jpg --question "What breed is this dog?"
    python -m inference ocr screenshot.png
    python -m inference compare a.png b.png [c.png ...]
    python -m inference describe photo.jpg --model tests/fixtures/phi3v-tiny/checkpoint --device cpu

The last one uses the tiny test checkpoint: no download, an answer of random words in seconds, a quick
check that the set-up works. The answer streams to stdout; every problem is one line on stderr and a
non-zero exit. Images go through the bot's own intake rules (formats, pixel limit, damaged files).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import sys
from pathlib import Path

from inference.errors import (
    EngineBusy,
    EngineDead,
    InferenceError,
    TooFewImages,
    TooLarge,
    TooManyImages,
    UnreadableImage,
)
from inference.images import DEFAULT_MAX_PIXELS
from inference.media import Pictures, read_file
from inference.process import exit_process
from inference.prompts import check_image_count
from inference.types import MAX_NEW_TOKENS_LIMIT, EngineConfig, Request, Task

DEFAULT_MODEL = EngineConfig.model_id
MAX_IMAGES = EngineConfig.max_images  # as the bot's MAX_IMAGES by default: compare takes the same
# The engine words a bad setting by the bot's name for it; here the person typed a flag.
FLAGS = {
    "DEVICE": "--device",
    "DTYPE": "--dtype",
    "QUANTIZATION": "--quantization",
    "NUM_CROPS": "--num-crops",
    "MAX_NEW_TOKENS": "--max-new-tokens",
    "MODEL_ID": "--model",
}
SETTING_NAMED = re.compile(rf"\b({'|'.join(FLAGS)})(?: is set to |=)")


MAX_NUM_CROPS = 16


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad option is one line ("error: ...") and exit code 2, without the usage block."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def int_between(low: int, high: int | None = None):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            allowed = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"{value} is out of range ({allowed})")
        return value

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineParser(prog="python -m inference", description=__doc__.split("\n\n")[0])
    common = OneLineParser(add_help=False)
    common.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="hub id or local folder (default: %(default)s; tests/fixtures/phi3v-tiny/checkpoint "
        "is a tiny random model for a quick check without a download)",
    )
    common.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    common.add_argument("--dtype", default="auto", help="auto, bfloat16, float16 or float32")
    common.add_argument(
        "--quantization",
        default="auto",
        choices=["auto", "none", "4bit", "8bit"],
        help="auto: 8bit on a CPU (faster), none on a GPU",
    )
    common.add_argument(
        "--num-crops",
        type=int_between(1, MAX_NUM_CROPS),
        default=None,
        help=f"tiles per image, 1-{MAX_NUM_CROPS} (default: the checkpoint's)",
    )
    common.add_argument(
        "--max-new-tokens",
        type=int_between(1, MAX_NEW_TOKENS_LIMIT),
        default=512,
        help=f"longest answer, in tokens (1-{MAX_NEW_TOKENS_LIMIT})",
    )
    common.add_argument("-v", "--verbose", action="store_true", help="show loading progress")
    tasks = parser.add_subparsers(dest="task", required=True, parser_class=OneLineParser)
    describe = tasks.add_parser("describe", parents=[common], help="describe an image")
    describe.add_argument("images", nargs=1, metavar="IMAGE")
    describe.add_argument("--question", "-q", default=None)
    ocr = tasks.add_parser("ocr", parents=[common], help="read the text in an image")
    ocr.add_argument("images", nargs=1, metavar="IMAGE")
    compare = tasks.add_parser("compare", parents=[common], help="compare two or more images")
    compare.add_argument("images", nargs="+", metavar="IMAGE")
    compare.add_argument("--question", "-q", default=None)
    return parser.parse_args(argv)


class CliError(Exception):
    pass


def for_the_terminal(error: Exception) -> str:
    """An error in words for the one person at this terminal (the bot words them for a server's members)."""
    match error:
        case TooLarge():
            return (
                "this request does not fit in the KV cache this machine has room for: use fewer or "
                "smaller images, --num-crops 4 or a smaller --max-new-tokens"
            )
        case EngineDead():
            return "the model stopped working; the messages above say why"
        case EngineBusy():
            return "the engine is busy; try again"
        case TooManyImages(limit=limit):
            return f"compare takes at most {limit} images (as the bot does by default)"
        case TooFewImages(minimum=minimum):
            return f"compare needs at least {minimum} images"
        case _:
            return SETTING_NAMED.sub(lambda named: f"{FLAGS[named.group(1)]} ", str(error))


def open_image(
    path_text: str, max_pixels: int = DEFAULT_MAX_PIXELS, num_crops: int | None = None, max_pictures: int = 1
) -> Pictures:
    """Read a picture, a PDF's pages or a video's frames (up to ``max_pictures``) by the bot's intake rules,
    or raise :class:`CliError` with one line."""
    path = Path(path_text)
    if path.is_dir():
        raise CliError(f"{path}: is a folder, not an image file")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CliError(f"{path}: no such file") from None
    except OSError as error:
        raise CliError(f"{path}: cannot be read ({error.strerror or error})") from None
    try:
        return read_file(data, max_pixels=max_pixels, num_crops=num_crops, max_pictures=max_pictures)
    except (UnreadableImage, TooManyImages) as error:
        raise CliError(f"{path}: {error}") from None


async def answer(args: argparse.Namespace) -> int:
    from inference.serving.engine import LocalEngine

    task = Task(args.task)
    # Read before the model loads, so a bad file is said at once; reduced for --num-crops where it is given.
    check_image_count(len(args.images), MAX_IMAGES, task)  # the bot's rule, before any file is read
    if len(args.images) == 1:  # one file: its pages or frames too, as the bot reads them
        pictures = open_image(args.images[0], num_crops=args.num_crops, max_pictures=MAX_IMAGES)
    else:
        pictures = Pictures(tuple(open_image(p, num_crops=args.num_crops).images[0] for p in args.images))
    config = EngineConfig(
        model_id=args.model,
        device=args.device,
        dtype=args.dtype,
        quantization=args.quantization,
        num_crops=args.num_crops,
        max_new_tokens=args.max_new_tokens,
        max_images=MAX_IMAGES,
        request_timeout_s=3600.0,
    )
    engine = LocalEngine(config)
    await engine.start()
    try:
        request = Request(
            task,
            pictures.images,
            question=getattr(args, "question", None),
            media=pictures.media,
            labels=pictures.labels,
            num_crops=pictures.num_crops,
        )
        async for piece in engine.stream(request):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
    finally:
        await engine.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return asyncio.run(answer(args))
    except (CliError, InferenceError) as exc:
        print(f"error: {for_the_terminal(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("Stopped.", file=sys.stderr)
        return 130


def cli() -> None:
    """The ``phi3v`` console script: ``python -m inference`` under a shorter name."""
    exit_process(main())


if __name__ == "__main__":
    cli()
