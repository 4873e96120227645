"""Where a first token's time goes: one request with one image, alone (the bot's describe prompt).

    python bench/first_token.py                # real size on CUDA (tiny without CUDA)
    python bench/first_token.py --tiny --repeats 2
    python bench/first_token.py --ways graphs,eager --profile

Each part is timed with the device synchronised, once cold (``first``) and then ``--repeats`` times
(``median``):

- ``prepare_ms``: the request turned into model inputs on the CPU (prompt, crops, pixels);
- ``vision_ms``: the prompt's embeddings, the image through the vision tower (once per request);
- ``prefill_ms``: the runner stepped from the request's admission to its first token, vision included
  (a 16-crop prompt is two steps: a chunk of 2,048 tokens, then the rest);
- ``engine_ttft_ms``, per way (``--ways``, as bench/throughput.py's): ``LocalEngine.stream`` as the bot
  calls it, until the first text: the preparation on a thread, the batch window, the prefill and the
  text's decoding; ``parts_median_ms`` splits it with marks taken on the engine's own threads (before
  preparing, preparing, waiting for the first step, the steps until the first text, the hand-over). On a
  CPU with few cores a tiny checkpoint's steps are slower there than in ``prefill_ms``: the engine's threads
  each keep OpenMP workers, which then sleep between the many small operations (nothing measurable at real
  size; see bench/RESULTS.md).

``work`` is the arithmetic done (matrix products and attention, in TFLOP) by the vision tower and by the
language model's prefill, and the rate each part achieved. With ``--profile``, the top kernels of one
prefill go to stderr and ``prefill_device_ms`` splits its GPU time into matrix products, attention and
the rest. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from bench.engine import PeakMemory, run_benchmark, synchronize
from bench.serving import FixedLengthRunner, versions
from bench.throughput import Engines, build_setup, model_parser, our_request, parse_ways
from inference.phi3v.image_processing_phi3v import CROP_SIZE
from inference.prepare import Prepared
from inference.types import Request, Task

log = logging.getLogger("bench.first_token")
TFLOP = 1e12
# Kernel names by what they compute (CUDA, cuBLAS, cuDNN and our Triton kernel's names).
MATMUL_MARKS = ("gemm", "nvjet", "cutlass", "splitkreduce", "xmma", "cublas")
ATTENTION_MARKS = ("flash", "fmha", "attention", "paged_decode", "efficient")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = model_parser(__doc__)
    parser.add_argument("--num-crops", type=int, default=None, help="HD crops per image (tiny 4, real 16)")
    parser.add_argument("--repeats", type=int, default=5, help="warm runs of each part (default 5)")
    parser.add_argument("--ways", default="graphs", help="the engine's ways for engine_ttft_ms")
    parser.add_argument("--profile", action="store_true", help="the top kernels of one prefill")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be positive")
    args.ways = parse_ways(parser, args.ways)
    args.levels, args.max_batch_size, args.max_new_tokens = [1], 1, 2
    return args


def timed_ms(call: Callable[[], object], device: torch.device, repeats: int) -> dict:
    """``call`` once cold, then ``repeats`` times: milliseconds, the device's work included."""
    times = []
    for _ in range(1 + repeats):
        synchronize(device)
        started = time.perf_counter()
        call()
        synchronize(device)
        times.append((time.perf_counter() - started) * 1000)
    return {"first": round(times[0], 1), "median": round(statistics.median(times[1:]), 1)}


def first_token(runner: FixedLengthRunner, prepared: Prepared) -> None:
    """One request admitted to an empty runner and stepped until its first token; then it leaves."""
    runner.reset()
    events = runner.step([(0, prepared)], [])
    while not events:
        events = runner.step([], [])
    runner.reset()


def work_tflop(model, prepared: Prepared) -> dict:
    """Matrix products and attention of the vision tower and of the prefill, in TFLOP (2 per multiply-add)."""
    config, tokens = model.config, prepared.prompt_tokens
    layers = model.model.layers
    language = sum(p.numel() for p in layers.parameters())
    hidden = config.hidden_size
    # Every token through every layer's weights, and each attending to the tokens before it (QK and PV).
    prefill = 2 * language * tokens + 2 * len(layers) * hidden * tokens * tokens
    vision = 0.0
    if prepared.image_sizes is not None:
        tower = model.model.vision_embed_tokens
        sizes = prepared.image_sizes.tolist()
        tiles = sum((h // CROP_SIZE) * (w // CROP_SIZE) + 1 for h, w in sizes)  # the crops and the overview
        per_tile = tower.patch_grid**2 + 1  # patches and CLS
        width, depth = tower.img_processor.config.hidden_size, tower.layers_to_run
        tower_weights = sum(p.numel() for p in tower.img_processor.parameters())
        vision = tiles * (2 * tower_weights * per_tile + 4 * depth * width * per_tile * per_tile)
        image_tokens = int(model.model.image_token_mask(prepared.input_ids).sum())
        vision += 2 * sum(p.numel() for p in tower.img_projection.parameters()) * image_tokens
    return {"vision": round(vision / TFLOP, 3), "prefill_language": round(prefill / TFLOP, 3)}


def device_time_split(profile) -> dict:
    """A profile's GPU time in milliseconds: matrix products, attention, the rest."""
    split = {"matmul": 0.0, "attention": 0.0, "other": 0.0}
    for event in profile.key_averages():
        self_us = getattr(event, "self_device_time_total", 0) or 0
        if self_us <= 0 or event.key.startswith("aten::"):
            continue
        name = event.key.lower()
        kind = "matmul" if any(mark in name for mark in MATMUL_MARKS) else "other"
        if any(mark in name for mark in ATTENTION_MARKS):
            kind = "attention"
        split[kind] += self_us / 1000
    return {kind: round(ms, 2) for kind, ms in split.items()}


def profile_prefill(runner: FixedLengthRunner, prepared: Prepared, device: torch.device) -> dict:
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as profile:
        first_token(runner, prepared)
        synchronize(device)
    table = profile.key_averages()
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print("--- one prefill: top operators ---", file=sys.stderr)
    print(table.table(sort_by=sort, row_limit=25), file=sys.stderr)
    return device_time_split(profile) if device.type == "cuda" else {}


class Timeline:
    """Marks, on the engine's own threads, when the runner prepares and steps: where a first token's time goes
    between the request and its first text."""

    def __init__(self, runner: FixedLengthRunner) -> None:
        self.marks: list[tuple[str, float]] = []
        for name in ("prepare", "step"):
            setattr(runner, name, self._marked(name, getattr(runner.runner, name)))

    def _marked(self, name: str, method: Callable) -> Callable:
        def marked(*args):
            self.marks.append((f"{name} start", time.perf_counter()))
            result = method(*args)
            self.marks.append((f"{name} end", time.perf_counter()))
            return result

        return marked

    def parts_ms(self, started: float, first_text_at: float) -> dict:
        """Before preparing, preparing, waiting for the first step, the steps until the first text, after."""
        at = dict(self.marks[:2])  # the prepare's start and end
        steps = [t for name, t in self.marks if name.startswith("step")]
        first_step = steps[0]
        last_step_end = max(t for t in steps if t <= first_text_at)
        return {
            "before_prepare": (at["prepare start"] - started) * 1000,
            "prepare": (at["prepare end"] - at["prepare start"]) * 1000,
            "waiting": (first_step - at["prepare end"]) * 1000,
            "steps": (last_step_end - first_step) * 1000,
            "to_the_reader": (first_text_at - last_step_end) * 1000,
        }


async def engine_ttft(engines: Engines, way: str, image, repeats: int) -> dict:
    """One request at a time through the engine, as the bot makes it: the first text's arrival, and where its
    time went (medians of the warm requests)."""
    async with engines.engine(way) as (engine, runner):
        timeline = Timeline(runner)
        times, parts = [], []
        for _ in range(1 + repeats):
            timeline.marks.clear()
            request = Request(Task.DESCRIBE, (image,), user_id=1, max_new_tokens=2)
            started = time.perf_counter()
            timing = await our_request(engine, request, started)
            times.append(timing.first_token_s * 1000)
            parts.append(timeline.parts_ms(started, started + timing.first_token_s))
    warm = parts[1:]
    return {
        "first": round(times[0], 1),
        "median": round(statistics.median(times[1:]), 1),
        "parts_median_ms": {part: round(statistics.median(p[part] for p in warm), 1) for part in warm[0]},
    }


def runner_parts(setup, args: argparse.Namespace) -> tuple[Prepared, dict, dict | None]:
    """The request prepared; the parts timed on a runner of its own; the profile's split, if asked."""
    loaded, device = setup.loaded, setup.loaded.device
    runner = FixedLengthRunner(loaded, setup.config)
    request = Request(Task.DESCRIBE, (setup.image,), user_id=0)
    prepared = runner.prepare(request)
    model = loaded.model

    def vision() -> None:
        with torch.inference_mode():
            pixel_values = prepared.pixel_values
            assert pixel_values is not None and prepared.image_sizes is not None  # the request has an image
            model.model.embed_with_images(
                prepared.input_ids[None].to(device),
                pixel_values.to(device, loaded.dtype),
                prepared.image_sizes.to(device),
            )

    parts = {
        "prepare_ms": timed_ms(lambda: runner.prepare(request), device, args.repeats),
        "vision_ms": timed_ms(vision, device, args.repeats),
        "prefill_ms": timed_ms(lambda: first_token(runner, prepared), device, args.repeats),
    }
    profile = profile_prefill(runner, prepared, device) if args.profile else None
    return prepared, parts, profile


def run(args: argparse.Namespace) -> dict:
    setup = build_setup(args)
    loaded, device = setup.loaded, setup.loaded.device
    prepared, parts, profile = runner_parts(setup, args)  # that runner and its cache are gone after it
    work = work_tflop(loaded.model, prepared)
    vision_s = parts["vision_ms"]["median"] / 1000
    language_s = (parts["prefill_ms"]["median"] - parts["vision_ms"]["median"]) / 1000
    rates = {
        "vision_tflop_s": round(work["vision"] / vision_s, 1) if vision_s > 0 else None,
        "prefill_language_tflop_s": round(work["prefill_language"] / language_s, 1)
        if language_s > 0
        else None,
    }
    engines = Engines(setup, PeakMemory(device))
    ttft = {way: asyncio.run(engine_ttft(engines, way, setup.image, args.repeats)) for way in args.ways}
    result = {
        "bench": "first_token",
        "size": setup.size,
        "device": str(device),
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "num_crops": loaded.processor.image_processor.num_crops,
        "prompt_tokens": prepared.prompt_tokens,
        "repeats": args.repeats,
        **parts,
        "engine_ttft_ms": ttft,
        "work_tflop": work,
        "achieved": rates,
    }
    if profile is not None:
        result["prefill_device_ms"] = profile
    result.update(versions())
    return result


def main(argv: list[str] | None = None) -> None:
    run_benchmark("first_token", parse_args(argv), run)


if __name__ == "__main__":
    main()
