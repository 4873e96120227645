"""A picture asked about again: the first piece of text of a first question, a follow-up, a second task on the
same picture, and then a new picture, one after another through the engine, one person; with kept blocks
(the bot as it runs) and without (every prompt computed whole), side by side on one loaded model.

    python bench/follow_up.py                       # real size, random weights, this machine's defaults
    python bench/follow_up.py --checkpoint DIR      # a bf16 checkpoint built before (bench/cpu.py)
    python bench/follow_up.py --checkpoint tests/fixtures/phi3v-tiny/checkpoint --crops 4   # in seconds

Random weights at the published shapes are saved once as a bf16 checkpoint in a temporary folder (as
``bench/cpu.py`` does), then loaded through the real loader with the settings an owner gets by default
(``DEVICE``, ``DTYPE`` and ``QUANTIZATION`` auto) and ``NUM_CROPS`` as ``--crops`` (16: the published
model's). Stop tokens are off (random weights would stop at random), so every answer has ``--tokens`` tokens.
For each request: seconds to the first piece of text, to the end, the prompt's tokens and how many of them
came from kept KV-cache blocks. The follow-up carries the first exchange as its history, as a reply to the
bot's answer does. Each way has pictures of its own. Progress goes to stderr; stdout gets one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: find the repo's packages

from bench.cpu import build_checkpoint, cpu_name
from bench.engine import device_name, new_picture, run_benchmark
from bench.serving import versions

IMAGE_SIDE = 1344  # fills 16 crops (4x4 tiles of 336)
QUESTION = "What is in this picture?"
FOLLOW_UP = "And what colours does it have?"

log = logging.getLogger("bench.follow_up")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", type=Path, default=None, help="a bf16 checkpoint built before")
    parser.add_argument("--crops", type=int, default=16, help="NUM_CROPS (16: the published model's)")
    parser.add_argument("--tokens", type=int, default=16, help="each answer's length")
    parser.add_argument("--device", default="auto", help="DEVICE, as the bot's setting")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="phi3v-follow-up-") as temporary:
        checkpoint = args.checkpoint
        if checkpoint is None:
            checkpoint = Path(temporary)
            log.info("building a random bf16 checkpoint in %s", checkpoint)
            build_checkpoint(checkpoint)
        return asyncio.run(measure(args, checkpoint))


async def measure(args: argparse.Namespace, checkpoint: Path) -> dict:
    from inference.loading import load, resolve_quantization
    from inference.serving import picture_features
    from inference.serving.engine import LocalEngine
    from inference.serving.runner import ModelRunner
    from inference.serving.startup import start_runner
    from inference.types import EngineConfig, Request, Task, Turn

    config = EngineConfig(
        model_id=str(checkpoint),
        device=args.device,
        num_crops=args.crops,
        max_new_tokens=args.tokens,
        request_timeout_s=24 * 3600.0,
    )
    started = time.perf_counter()
    loaded = load(config)

    def factory(engine_config: EngineConfig) -> ModelRunner:
        runner = start_runner(loaded, engine_config)
        runner.stop_ids = set()  # every answer as long as asked
        return runner

    engine = LocalEngine(config, runner_factory=factory)
    await engine.start()
    load_s = time.perf_counter() - started
    runner = engine._runner
    assert isinstance(runner, ModelRunner)
    log.info("ready in %.1f s: %s", load_s, runner.hardware_text)

    async def ask(name: str, request: Request) -> tuple[dict, str]:
        reused_before = engine.stats().prompt_tokens_reused
        prompt_tokens = runner.prepare(request).prompt_tokens
        begun, first, pieces = time.perf_counter(), None, []
        async for piece in engine.stream(request):
            first = first or time.perf_counter() - begun
            pieces.append(piece)
        figures = {
            "first_text_s": round(first or 0.0, 2),
            "answer_s": round(time.perf_counter() - begun, 2),
            "prompt_tokens": prompt_tokens,
            "reused_tokens": engine.stats().prompt_tokens_reused - reused_before,
        }
        log.info("%s: %s", name, figures)
        return figures, "".join(pieces).strip()

    async def four_requests(way: str) -> dict[str, dict]:
        picture = new_picture(IMAGE_SIDE, IMAGE_SIDE)
        results: dict[str, dict] = {}
        results["first_question"], answer = await ask(
            f"{way}: first question", Request(Task.DESCRIBE, (picture,), question=QUESTION)
        )
        results["follow_up"], _ = await ask(
            f"{way}: follow-up",
            Request(Task.DESCRIBE, (picture,), question=FOLLOW_UP, history=(Turn(QUESTION, answer or "."),)),
        )
        results["second_task"], _ = await ask(f"{way}: second task (OCR)", Request(Task.OCR, (picture,)))
        results["new_picture"], _ = await ask(
            f"{way}: a new picture",
            Request(Task.DESCRIBE, (new_picture(IMAGE_SIDE, IMAGE_SIDE),), question=QUESTION),
        )
        return results

    by_way = {"kept_blocks": await four_requests("kept blocks")}
    # Bench only: nothing is kept from here on (no block, no picture's features): every prompt computed whole.
    runner.pool.keep = lambda *args: None  # type: ignore[method-assign]
    runner.pictures.clear()
    picture_features.PICTURES_KEPT = 0
    by_way["computed_whole"] = await four_requests("computed whole")
    await engine.stop()
    return {
        "bench": "follow_up",
        "date": datetime.date.today().isoformat(),
        "device_name": device_name(loaded.device),
        "cpu": cpu_name(),
        "precision": str(loaded.dtype).removeprefix("torch."),
        "quantization": resolve_quantization(config.quantization, loaded.device),
        "hardware": runner.hardware_text,
        "num_crops": runner.num_crops,
        "answer_tokens": args.tokens,
        "load_and_start_s": round(load_s, 1),
        "by_way": by_way,
        **versions(),
    }


def main(argv: list[str] | None = None) -> None:
    run_benchmark("follow_up.py", parse_args(argv), run)


if __name__ == "__main__":
    main()
