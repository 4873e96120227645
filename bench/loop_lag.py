"""Event-loop lag while the engine is saturated through the bot's real path.

    python bench/loop_lag.py                       # 16 users, tiny checkpoint (CPU, or CUDA if present)
    python bench/loop_lag.py --concurrency 32 --requests 128 --max-new-tokens 64
    python bench/loop_lag.py --real-size           # real-size model with random weights, for a GPU

A ticker coroutine sleeps ``--tick-ms`` again and again and records how late each wake-up is
(overshoot = actual sleep - asked sleep). Three phases run one after the other in one process:

1. ``idle``: the ticker alone, the floor the event loop and the OS give on this machine;
2. ``engine``: N users at once, each sending requests one after another through the bot's path:
   the upload's bytes decoded by ``bot.images.load_images`` (in a worker thread, as the bot does),
   then ``LocalEngine.stream`` consumed by ``bot.reply.Reply.stream`` (edits go to a target
   that does nothing). The engine prepares inputs on its own threads and runs the model on its
   model thread;
3. ``on_loop`` (contrast, the naive way): the same users and engine code, but the image is decoded,
   the inputs prepared and every model step run synchronously on the event loop thread.

Model: the tiny test checkpoint through the real loader (or, with ``--real-size``, the published
config with random weights, built as bench/engine.py does) and the real ``ModelRunner`` with its stop
tokens off, so every answer is exactly ``--max-new-tokens`` long. Engine settings are the bot's defaults
(batch size, token budget, batch window, num_crops from the checkpoint) unless changed by the options.
Progress goes to stderr; stdout gets exactly one JSON line. See bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import io
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: find the repo's packages


from bench.engine import (
    OFFICIAL_DIR,
    TINY_DIR,
    build_model,
    device_name,
    load_processor,
    run_benchmark,
    synthetic_image,
)
from bench.serving import FixedLengthRunner, OnLoopEngine, percentiles_ms, versions
from bot.images import ImageLimits, ImageSource, decode_image, load_images
from bot.reply import EditBudget, Reply
from bot.settings import DOWNLOAD_TIMEOUT_S, Settings
from inference.loading import LoadedModel, load, resolve_attention, resolve_device, resolve_dtype
from inference.serving.engine import LocalEngine
from inference.types import EngineConfig, Request, Task

DEFAULT_CONCURRENCY = 16
DEFAULT_REQUESTS_PER_USER = 4  # --requests defaults to this many per concurrent user
DEFAULT_MAX_NEW_TOKENS = 32
DEFAULT_TICK_MS = 1.0
IDLE_SECONDS = 2.0
TARGET_P99_MS = 5.0
LAG_POINTS = (50, 99)
UPLOAD_SIZE = (1600, 1200)  # (width, height): a phone photo as Discord keeps it
UPLOAD_JPEG_QUALITY = 90
UPLOAD_NAME = "photo.jpg"
UPLOAD_URL = "https://cdn.discordapp.com/attachments/1/2/photo.jpg"

log = logging.getLogger("bench.loop_lag")


# ----------------------------------------------------------------------------------------------------------
# Setup


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY, help="users sending at once")
    parser.add_argument(
        "--requests",
        type=int,
        default=None,
        help=f"requests in all (default {DEFAULT_REQUESTS_PER_USER} per user)",
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS, help="tokens per answer"
    )
    parser.add_argument("--tick-ms", type=float, default=DEFAULT_TICK_MS, help="the ticker's sleep (1 or 5)")
    parser.add_argument("--max-batch-size", type=int, default=None, help="default: the bot's MAX_BATCH_SIZE")
    parser.add_argument("--num-crops", type=int, default=None, help="default: the checkpoint's, 16")
    parser.add_argument(
        "--switch-interval-ms",
        type=float,
        default=None,
        help="set Python's GIL switch interval (sys.setswitchinterval) for the whole run; default: Python's",
    )
    parser.add_argument("--skip-on-loop", action="store_true", help="do not run the naive on-loop contrast")
    parser.add_argument(
        "--real-size", action="store_true", help="real-size Phi-3-vision with random weights (for a GPU)"
    )
    parser.add_argument("--device", default="auto", help="auto (default: CUDA if present), cpu, cuda, cuda:N")
    parser.add_argument("--dtype", default="auto", help="auto (default), bfloat16, float16 or float32")
    args = parser.parse_args(argv)
    if args.requests is None:
        args.requests = DEFAULT_REQUESTS_PER_USER * args.concurrency
    if min(args.concurrency, args.requests, args.max_new_tokens) < 1 or args.tick_ms <= 0:
        parser.error("--concurrency, --requests, --max-new-tokens and --tick-ms must be positive")
    return args


def engine_config(args: argparse.Namespace) -> EngineConfig:
    """The bot's default engine settings, with the model, device and sizes asked for."""
    config = Settings().engine_config()
    return dataclasses.replace(
        config,
        model_id=str(OFFICIAL_DIR if args.real_size else TINY_DIR),
        device=args.device,
        dtype=args.dtype,
        max_new_tokens=args.max_new_tokens,
        max_queued=max(config.max_queued, args.concurrency),
        max_batch_size=args.max_batch_size or config.max_batch_size,
        num_crops=args.num_crops,
    )


def image_limits() -> ImageLimits:
    """The bot's default intake limits (``VisionBot`` builds the same from its settings)."""
    settings = Settings()
    return ImageLimits(
        max_bytes=settings.max_attachment_bytes,
        max_pixels=settings.max_image_pixels,
        allowed_hosts=settings.cdn_hosts,
        download_timeout_s=DOWNLOAD_TIMEOUT_S,
    )


def upload_bytes() -> bytes:
    """A photo-like JPEG, the kind of file users attach."""
    buffer = io.BytesIO()
    synthetic_image(*UPLOAD_SIZE).save(buffer, format="JPEG", quality=UPLOAD_JPEG_QUALITY)
    return buffer.getvalue()


def real_size_model(config: EngineConfig) -> LoadedModel:
    """Real-size Phi-3-vision with random weights, built on the device (bench/engine.py's way)."""
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    attention = resolve_attention(config.attn_implementation, device)
    model = build_model(False, device, dtype, attention)
    processor = load_processor(False)
    if config.num_crops is not None:
        processor.image_processor.num_crops = config.num_crops
    return LoadedModel(model, processor, device, dtype, attention, OFFICIAL_DIR)


class RunnerFactory:
    """The engine's runner factory: the tiny checkpoint through the real loader, or the real size with
    random weights; stop tokens off. Builds the model once and hands the same runner to each engine."""

    def __init__(self, real_size: bool) -> None:
        self.real_size = real_size
        self.runner: FixedLengthRunner | None = None

    def __call__(self, config: EngineConfig) -> FixedLengthRunner:
        if self.runner is None:
            loaded = real_size_model(config) if self.real_size else load(config)
            self.runner = FixedLengthRunner(loaded, config)
        self.runner.reset()
        return self.runner


class MemoryFetcher:
    """Stands in for the Discord CDN download: hands back the upload's bytes at once."""

    def __init__(self, data: bytes):
        self.data = data

    async def fetch(self, url: str, *, max_bytes: int) -> bytes:
        return self.data


class SilentSurface:
    """Where the reply shows the answer: nowhere (the Discord calls are not what is measured)."""

    budget_keys = ()
    acknowledging_spends_an_edit = True  # as a prefix command's message
    private = False
    shows_only_answers = False

    def shown_privately(self, private: bool) -> bool:
        return False

    def hand_over_in_s(self) -> float | None:
        return None

    def answer_window_s(self) -> float | None:
        return None

    async def hand_over(self, text: str = "") -> None:
        raise AssertionError("a message never needs handing over")

    async def acknowledge(self, text: str = "") -> None:
        pass

    async def show(self, content: str, *, private: bool) -> None:
        pass

    async def add(self, content: str) -> SilentSurface:
        return self  # the posted message: editing or deleting it does nothing either

    async def edit(self, *, content: str) -> None:
        pass

    async def delete(self) -> None:
        pass

    async def add_file(self, content: str, file: object) -> None:
        pass

    async def delete_main(self) -> None:
        """Nothing was posted, so there is nothing to delete."""

    async def main_message_id(self) -> None:
        return None


# ----------------------------------------------------------------------------------------------------------
# Workload


class Users:
    """N users sending requests one after another until ``total`` requests have been answered."""

    def __init__(self, engine: LocalEngine, data: bytes, limits: ImageLimits, *, decode_on_loop: bool):
        self.engine = engine
        self.data = data
        self.limits = limits
        self.decode_on_loop = decode_on_loop
        self.fetcher = MemoryFetcher(data)
        self.source = ImageSource(UPLOAD_NAME, UPLOAD_URL, size=len(data), content_type="image/jpeg")
        self.to_send = 0
        self.completed = 0

    async def run(self, concurrency: int, total: int) -> int:
        self.to_send, self.completed = total, 0
        await asyncio.gather(*(self._user(user_id) for user_id in range(1, concurrency + 1)))
        return self.completed

    async def _user(self, user_id: int) -> None:
        while self.to_send > 0:
            self.to_send -= 1
            await self.answer(user_id)
            self.completed += 1

    async def answer(self, user_id: int) -> str:
        """One request as the bot handles it: decode the upload, ask the engine, stream the answer."""
        images = await self._images()
        request = Request(Task.DESCRIBE, images, user_id=user_id)
        # A budget per user, like one channel each: previews as often as one reply allows.
        reply = Reply(SilentSurface(), [EditBudget(per_s=1.0, burst=5)])
        return await reply.stream(self.engine.stream(request, on_position=reply.place_in_line))

    async def _images(self) -> tuple:
        if self.decode_on_loop:
            return (decode_image(self.data, UPLOAD_NAME, max_pixels=self.limits.max_pixels),)
        return await load_images([self.source], self.limits, self.fetcher)


# ----------------------------------------------------------------------------------------------------------
# Measurement


async def ticker(interval_s: float, stop: asyncio.Event) -> list[float]:
    """Sleep ``interval_s`` until told to stop; return each wake-up's overshoot in seconds."""
    lags = []
    while not stop.is_set():
        before = time.perf_counter()
        await asyncio.sleep(interval_s)
        lags.append(time.perf_counter() - before - interval_s)
    return lags


async def measure(workload: Callable[[], Awaitable[int]], interval_s: float) -> dict:
    """Run ``workload`` with the ticker beside it; lag statistics, ticks, requests done and wall time."""
    stop = asyncio.Event()
    ticks = asyncio.create_task(ticker(interval_s, stop))
    await asyncio.sleep(0)  # the ticker is running before the work starts
    started = time.perf_counter()
    completed = await workload()
    wall_s = time.perf_counter() - started
    stop.set()
    lags = await ticks
    return {
        "lag_ms": percentiles_ms(lags, LAG_POINTS),
        "ticks": len(lags),
        "requests_completed": completed,
        "wall_s": round(wall_s, 2),
    }


def with_target(result: dict) -> dict:
    result["target_p99_ms"] = TARGET_P99_MS
    result["target_met"] = result["lag_ms"]["p99"] < TARGET_P99_MS
    return result


async def idle_phase(interval_s: float) -> dict:
    log.info("idle: the ticker alone for %.0f s", IDLE_SECONDS)
    result = await measure(lambda: asyncio.sleep(IDLE_SECONDS, result=0), interval_s)
    del result["requests_completed"]
    return result


async def load_phase(
    args: argparse.Namespace, config: EngineConfig, factory: RunnerFactory, data: bytes, *, on_loop: bool
) -> dict:
    """Start an engine, warm it up with one request, then measure under full load."""
    engine = (OnLoopEngine if on_loop else LocalEngine)(config, factory)
    users = Users(engine, data, image_limits(), decode_on_loop=on_loop)
    await engine.start()
    try:
        await users.answer(user_id=0)  # warm-up: first-call costs are not what is measured
        tokens_before = factory.runner.tokens_generated
        log.info(
            "%s: %d users, %d requests, %d tokens each",
            "on_loop" if on_loop else "engine",
            args.concurrency,
            args.requests,
            args.max_new_tokens,
        )
        result = await measure(lambda: users.run(args.concurrency, args.requests), args.tick_ms / 1000)
        result["tokens_generated"] = factory.runner.tokens_generated - tokens_before
    finally:
        await engine.stop()
    return with_target(result)


async def run(args: argparse.Namespace) -> dict:
    config = engine_config(args)
    data = upload_bytes()
    interval_s = args.tick_ms / 1000
    factory = RunnerFactory(args.real_size)
    idle = await idle_phase(interval_s)
    engine = await load_phase(args, config, factory, data, on_loop=False)
    on_loop = None
    if not args.skip_on_loop:
        on_loop = await load_phase(args, config, factory, data, on_loop=True)
        on_loop["label"] = (
            "NAIVE CONTRAST: image decode, preprocessing and model steps on the event loop thread"
        )
    return report(args, config, factory.runner.loaded, data, idle, engine, on_loop)


def report(
    args: argparse.Namespace,
    config: EngineConfig,
    loaded: LoadedModel,
    data: bytes,
    idle: dict,
    engine: dict,
    on_loop: dict | None,
) -> dict:
    width, height = UPLOAD_SIZE
    return {
        "bench": "loop_lag",
        "size": "real" if args.real_size else "tiny",
        "device": str(loaded.device),
        "device_name": device_name(loaded.device),
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "attention": loaded.attn_implementation,
        "concurrency": args.concurrency,
        "requests": args.requests,
        "max_new_tokens": args.max_new_tokens,
        "tick_ms": args.tick_ms,
        "gil_switch_interval_ms": round(sys.getswitchinterval() * 1000, 3),
        "engine_config": {
            "max_batch_size": config.max_batch_size,
            "token_budget": config.token_budget,
            "batch_window_ms": config.batch_window_ms,
            "max_queued": config.max_queued,
            "num_crops": loaded.processor.image_processor.num_crops,
        },
        "upload": {"format": "JPEG", "size": f"{width}x{height}", "bytes": len(data)},
        "idle": idle,
        "engine": engine,
        "on_loop": on_loop,
        **versions(),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.switch_interval_ms is not None:
        sys.setswitchinterval(args.switch_interval_ms / 1000)
    run_benchmark("loop_lag.py", args, lambda parsed: asyncio.run(run(parsed)))


if __name__ == "__main__":
    main()
