"""Command line: check a model set-up without Discord.

    python -m inference describe photo.jpg --question "What breed is this dog?"
    python -m inference ocr screenshot.png
    python -m inference compare a.png b.png [c.png ...]

The answer streams to stdout; problems are reported as one line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from inference.errors import InferenceError
from inference.images import flatten_to_rgb
from inference.prompts import MIN_COMPARE_IMAGES
from inference.types import EngineConfig, Request, Task

DEFAULT_MODEL = EngineConfig.model_id


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m inference", description=__doc__.split("\n\n")[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--model", default=DEFAULT_MODEL, help="hub id or local folder (default: %(default)s)"
    )
    common.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    common.add_argument("--dtype", default="auto", help="auto, bfloat16, float16 or float32")
    common.add_argument("--quantization", default="none", choices=["none", "4bit", "8bit"])
    common.add_argument(
        "--num-crops", type=int, default=None, help="tiles per image (default: the checkpoint's)"
    )
    common.add_argument("--max-new-tokens", type=int, default=512)
    common.add_argument("-v", "--verbose", action="store_true", help="show loading progress")
    tasks = parser.add_subparsers(dest="task", required=True)
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


def open_image(path_text: str) -> Image.Image:
    path = Path(path_text)
    if not path.is_file():
        raise CliError(f"{path}: no such file")
    try:
        with Image.open(path) as image:
            return flatten_to_rgb(ImageOps.exif_transpose(image))
    except (UnidentifiedImageError, OSError) as exc:
        raise CliError(f"{path}: not an image this tool can read ({exc.__class__.__name__})") from exc


async def answer(args: argparse.Namespace) -> int:
    from inference.engine import LocalEngine

    task = Task(args.task)
    images = tuple(open_image(p) for p in args.images)
    if task is Task.COMPARE and len(images) < MIN_COMPARE_IMAGES:
        raise CliError("compare needs at least two images")
    config = EngineConfig(
        model_id=args.model,
        device=args.device,
        dtype=args.dtype,
        quantization=args.quantization,
        num_crops=args.num_crops,
        max_new_tokens=args.max_new_tokens,
        max_images=max(len(images), 1),
        request_timeout_s=3600.0,
    )
    engine = LocalEngine(config)
    await engine.start()
    try:
        request = Request(task, images, question=getattr(args, "question", None))
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
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
