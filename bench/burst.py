"""The longest pause a running answer sees while a burst of newcomers arrives, and what joins and leaves cost.

    python bench/burst.py                      # real size (random weights) on a CUDA GPU; tiny otherwise
    python bench/burst.py --tiny --running 2 --newcomers 8
    python bench/burst.py --tiny --images 4 --num-crops 16   # newcomers with four images each
    python bench/burst.py --ways graphs,eager  # decoding from CUDA graphs and eagerly, side by side

``--running`` people are being answered (long answers); once each of them has a few tokens, ``--newcomers``
more people ask at the same moment (one image each, the bot's describe prompt). For each way in turn, on
the same model:

- ``gap_ms``: the time between two tokens of a running answer, for every pair of tokens around the
  burst (from the moment the newcomers ask until the last of them has its first token): p50/p99/max.
  A newcomer's prompt goes in ``PREFILL_CHUNK_TOKENS`` at a time beside the running answers;
- ``steady_gap_ms``: the same before the burst (one decoding step), for scale;
- ``newcomer_first_token_ms``: from the burst to each newcomer's first token: p50/p95/max;
- ``join_leave_ms``: time spent adding requests to the batch and removing them (the block bookkeeping),
  waiting for the device in each: total, max, count;
- ``tok_s``: all tokens generated during the measured run, divided by its time; peak memory.

The model card's way is not measured here: it answers one person at a time, so a running answer never
pauses but every newcomer waits for all the answers before theirs (``throughput.py`` measures that).
Every answer has its full length (stop tokens off). Progress goes to stderr; stdout gets one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: find the repo's packages

import torch

from bench.engine import PeakMemory, device_name, new_picture, run_benchmark, synthetic_image
from bench.serving import percentiles_ms, versions
from bench.throughput import (
    IMAGE_SIZE,
    Engines,
    Setup,
    build_loaded,
    model_inputs,
    model_parser,
    parse_ways,
    run_ours,
)
from inference.prompts import build_prompt
from inference.serving.block_pool import BLOCK_TOKENS
from inference.serving.engine import LocalEngine
from inference.types import EngineConfig, Request, Task

DEFAULTS = {  # size -> running, newcomers, running answer tokens, newcomer answer tokens, crops
    "tiny": (2, 8, 96, 16, 4),
    "real": (4, 32, 384, 128, 16),
}
TOKENS_BEFORE_BURST = 8  # each running answer has this many tokens when the burst arrives
TARGET_GAP_MS = 150.0  # at real size on a GPU, 32 newcomers, 16 crops
WARMUP_REQUESTS, WARMUP_TOKENS = 2, 4

log = logging.getLogger("bench.burst")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = model_parser(__doc__)
    parser.add_argument("--running", type=int, default=None, help="answers already running (tiny 2, real 4)")
    parser.add_argument(
        "--running-tokens", type=int, default=None, help="each running answer's length (tiny 96, real 384)"
    )
    parser.add_argument("--newcomers", type=int, default=None, help="people asking at once (tiny 8, real 32)")
    parser.add_argument("--num-crops", type=int, default=None, help="HD crops per image (tiny 4, real 16)")
    parser.add_argument("--images", type=int, default=1, help="images per newcomer (more: compare)")
    parser.add_argument("--prefill-chunk-tokens", type=int, default=None, help="PREFILL_CHUNK_TOKENS (2048)")
    parser.add_argument(
        "--ways",
        default="graphs",
        help="ways, in order (bench/throughput.py's; default graphs)",
    )
    args = parser.parse_args(argv)
    for name in ("running", "newcomers", "num_crops", "prefill_chunk_tokens", "images", "running_tokens"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    args.ways = parse_ways(parser, args.ways)
    args.levels = [1]  # what build_loaded's sizing expects of throughput's options
    args.max_new_tokens = args.max_batch_size = None
    return args


def build(args: argparse.Namespace) -> tuple[Setup, dict]:
    size, loaded = build_loaded(args)
    running, newcomers, running_tokens, new_tokens, crops = DEFAULTS[size]
    running_tokens = args.running_tokens or running_tokens
    shape = {
        "running": args.running or running,
        "newcomers": args.newcomers or newcomers,
        "running_tokens": running_tokens,
        "newcomer_tokens": new_tokens,
        "newcomer_images": args.images,
    }
    loaded.processor.image_processor.num_crops = args.num_crops or crops
    image, prompt = synthetic_image(*IMAGE_SIZE), build_prompt(Task.DESCRIBE, 1)
    prompt_tokens = int(
        model_inputs(loaded.processor, prompt, image, torch.device("cpu"))["input_ids"].shape[1]
    )
    newcomer = newcomer_request(image, args.images, 0, new_tokens)
    newcomer_prompt = loaded.processor(
        text=build_prompt(newcomer.task, len(newcomer.images)), images=list(newcomer.images)
    )["input_ids"]
    shape["newcomer_prompt_tokens"] = len(newcomer_prompt[0])
    people = shape["running"] + shape["newcomers"]
    config = EngineConfig(
        model_id=str(loaded.source),
        device=str(loaded.device),
        dtype=str(loaded.dtype).removeprefix("torch."),
        num_crops=loaded.processor.image_processor.num_crops,
        max_new_tokens=running_tokens,
        request_timeout_s=3600.0,
        max_queued=people,
        max_batch_size=people,
        token_budget=shape["running"] * in_blocks(prompt_tokens + running_tokens)
        + shape["newcomers"] * in_blocks(shape["newcomer_prompt_tokens"] + new_tokens),
        prefill_chunk_tokens=args.prefill_chunk_tokens or EngineConfig.prefill_chunk_tokens,
    )
    return Setup(size, loaded, config, image, prompt, prompt_tokens), shape


def in_blocks(tokens: int) -> int:
    """The cache one request reserves: whole blocks."""
    return -(-tokens // BLOCK_TOKENS) * BLOCK_TOKENS


def newcomer_request(image, images: int, user: int, new_tokens: int) -> Request:
    task = Task.COMPARE if images > 1 else Task.DESCRIBE
    return Request(task, (image,) * images, user_id=user, max_new_tokens=new_tokens)


async def answer(engine: LocalEngine, request: Request) -> None:
    async for _piece in engine.stream(request):
        pass


async def measure(engines: Engines, way: str, shape: dict) -> dict:
    setup = engines.setup
    async with engines.engine(way) as (engine, runner):
        log.info("warm-up (%s)", way)
        await run_ours(engine, runner, setup, WARMUP_REQUESTS, WARMUP_TOKENS)
        times, runner.join_leave_s[:] = runner.token_times, []
        times.clear()
        started, tokens_before = time.perf_counter(), runner.tokens_generated
        newcomers = [
            newcomer_request(new_picture(*IMAGE_SIZE), shape["newcomer_images"], i, shape["newcomer_tokens"])
            for i in range(shape["newcomers"])
        ]
        running = [
            asyncio.ensure_future(
                answer(engine, Request(Task.DESCRIBE, (new_picture(*IMAGE_SIZE),), user_id=1000 + i))
            )
            for i in range(shape["running"])
        ]
        while len(times) < shape["running"] or min(len(t) for t in times.values()) < TOKENS_BEFORE_BURST:
            await asyncio.sleep(0.001)
        running_ids = set(times)
        log.info("%d answers running; %d newcomers ask now", len(running_ids), shape["newcomers"])
        burst_at = time.perf_counter()
        await asyncio.gather(*running, *(answer(engine, request) for request in newcomers))
        wall_s = time.perf_counter() - started
        tokens = runner.tokens_generated - tokens_before
        join_leave = list(runner.join_leave_s)
    newcomer_ids = set(times) - running_ids
    firsts = [times[rid][0] for rid in newcomer_ids]
    burst_done = max(firsts)
    gaps, steady = [], []
    for rid in running_ids:
        for before, after in itertools.pairwise(times[rid]):
            if after > burst_at and before < burst_done:
                gaps.append(after - before)
            elif after <= burst_at:
                steady.append(after - before)
    return {
        "gap_ms": percentiles_ms(gaps, (50, 99)),
        "steady_gap_ms": percentiles_ms(steady, (50, 99)) if steady else None,
        "newcomer_first_token_ms": percentiles_ms([first - burst_at for first in firsts], (50, 95)),
        "burst_s": round(burst_done - burst_at, 3),
        "join_leave_ms": {
            "total": round(sum(join_leave) * 1000, 3),
            "max": round(max(join_leave, default=0.0) * 1000, 3),
            "count": len(join_leave),
        },
        "new_tokens": tokens,
        "wall_s": round(wall_s, 3),
        "tok_s": round(tokens / wall_s, 2),
        "peak_memory_mib": engines.peak_mib.get(way),
    }


async def measure_all(engines: Engines, ways: list[str], shape: dict) -> dict:
    results = {}
    for way in ways:
        results[way] = await measure(engines, way, shape)
        log.info("%s: longest gap %.1f ms", way, results[way]["gap_ms"]["max"])
    return results


def run(args: argparse.Namespace) -> dict:
    setup, shape = build(args)
    loaded, config = setup.loaded, setup.config
    memory = PeakMemory(loaded.device)
    engines = Engines(setup, memory)
    started = time.perf_counter()
    by_way = asyncio.run(measure_all(engines, args.ways, shape))
    memory.end_phase()
    applies = setup.size == "real" and loaded.device.type == "cuda"
    first = by_way[args.ways[0]]
    return {
        "bench": "burst",
        "size": setup.size,
        "device": str(loaded.device),
        "device_name": device_name(loaded.device),
        "dtype": config.dtype,
        "num_crops": config.num_crops,
        "image": "x".join(map(str, IMAGE_SIZE)),
        "prompt_tokens": setup.prompt_tokens,
        **shape,
        "engine_config": {
            "max_batch_size": config.max_batch_size,
            "token_budget": config.token_budget,
            "prefill_chunk_tokens": config.prefill_chunk_tokens,
            "batch_window_ms": config.batch_window_ms,
        },
        "by_way": by_way,
        "target": {
            "gap_max_ms": TARGET_GAP_MS,
            "applies_to": "real size on a GPU, 32 newcomers, 16 crops",
            "this_run_applies": applies,
            "met": (first["gap_ms"]["max"] <= TARGET_GAP_MS) if applies else None,
        },
        "peak_memory_kind": memory.kind,
        "run_s": round(time.perf_counter() - started, 1),
        **versions(),
    }


def main(argv: list[str] | None = None) -> None:
    run_benchmark("burst.py", parse_args(argv), run)


if __name__ == "__main__":
    main()
