"""Aggregate tokens/s and latency at 1, 8, 16 and 32 concurrent users: our engine vs the model card's way.

    python bench/throughput.py                 # real size (4.15B parameters, random weights) on a CUDA GPU;
                                               # the tiny test checkpoint when there is no CUDA GPU
    python bench/throughput.py --tiny          # the tiny checkpoint, whatever the machine
    python bench/throughput.py --levels 1,8,16,32 --max-new-tokens 128 --num-crops 16
    python bench/throughput.py --ways graphs --card-levels 1,8    # fewer runs, for a short GPU slot

For each level N, N requests (N different users, one image each, the bot's describe prompt) are made
at the same moment, in several ways, one after the other in the same process:

- ours: ``LocalEngine.stream`` for all N at once (fair scheduler, continuous batching on the model
  thread), exactly as the bot calls it, in each way ``--ways`` names: ``graphs`` (decoding from CUDA
  graphs where they run and pass their start-up check: the default), ``eager`` (the same runner
  stepping eagerly), and graphs with one of the fused parts replaced by transformers' own (``plain-norms``:
  RMSNorm, inference/kernels/norms.py; ``plain-rope``: the rotary embedding and KV write,
  inference/kernels/fused_attention.py; ``unfused``: both). The first is ``ours``; the others appear under
  their names, with ``speedup_over`` each;
- the model card's way: the same N requests one after another, each
  ``model.generate(**processor(prompt, [image]), ...)`` then ``batch_decode``, as Microsoft's model card
  shows; request k waits for the k-1 before it, so its latency counts their time too.

Every answer is exactly ``--max-new-tokens`` long both ways (our runner's stop tokens are switched off,
``min_new_tokens`` does it for ``generate``), so both ways do the same work. Same model, same weights,
same processor. The model card's way answers one request after another, so its tokens/s does not depend
on how many wait: with ``--card-levels`` it is measured at fewer levels, and the speed-up at the others is
taken against the rate at the largest level measured (``speedup_basis`` says so). Progress goes to
stderr; stdout gets exactly one JSON line.
See bench/RESULTS.md for what each figure means.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: find the repo's packages

import torch
from PIL import Image
from transformers import BatchFeature
from transformers.generation.streamers import BaseStreamer

from bench.engine import (
    OFFICIAL_DIR,
    TINY_DIR,
    PeakMemory,
    build_model,
    device_name,
    load_processor,
    new_picture,
    run_benchmark,
    synchronize,
    synthetic_image,
)
from bench.serving import FixedLengthRunner, percentiles_ms, versions
from inference.errors import InferenceError
from inference.kernels.fused_attention import use_fused_rope
from inference.kernels.norms import use_fused_norms
from inference.loading import (
    LoadedModel,
    resolve_attention,
    resolve_device,
    resolve_dtype,
    use_language_attention,
)
from inference.prompts import build_prompt
from inference.serving.block_pool import BLOCK_TOKENS
from inference.serving.engine import LocalEngine
from inference.types import EngineConfig, Request, Task

DEFAULT_LEVELS = (1, 8, 16, 32)
# The engine's ways, by name: decoding from CUDA graphs where they run (the default), eagerly; and from
# graphs with transformers' own RMSNorm instead of the fused one (inference/kernels/norms.py), with
# transformers' rotary embedding and the cache's own write instead of the fused kernel
# (inference/kernels/fused_attention.py), or with neither fused.
WAYS = ("graphs", "eager", "plain-norms", "plain-rope", "unfused")


def engine_way(config: EngineConfig, way: str) -> EngineConfig:
    """``config`` set up for one of :data:`WAYS`."""
    return dataclasses.replace(
        config,
        cuda_graphs=way != "eager",
        fused_norms=way not in ("plain-norms", "unfused"),
        fused_rope=way not in ("plain-rope", "unfused"),
    )


def parse_ways(parser: argparse.ArgumentParser, text: str) -> list[str]:
    ways = [way.strip() for way in text.split(",") if way.strip()]
    if not ways or not set(ways) <= set(WAYS) or len(set(ways)) < len(ways):
        parser.error(f"--ways takes {', '.join(WAYS)}, separated by commas")
    return ways


DEFAULT_MAX_NEW_TOKENS = {"tiny": 64, "real": 128}
DEFAULT_NUM_CROPS = {"tiny": 4, "real": 16}  # real: the published checkpoint's value, what the bot runs
IMAGE_SIZE = (1000, 600)  # (width, height)
WARMUP_REQUESTS = 2
WARMUP_TOKENS = 4
LATENCY_POINTS = (50, 95)
REQUEST_TIMEOUT_S = 3600.0  # never the limit here: a slow machine must not turn into timeouts
TARGET_LEVEL = 32
TARGET_SPEEDUP = 12.0  # on an H100 at real size: 32 concurrent users >= 12x the sequential aggregate

log = logging.getLogger("bench.throughput")


# ----------------------------------------------------------------------------------------------------------
# Setup


def model_parser(description: str | None) -> argparse.ArgumentParser:
    """A parser with the options that choose the model: --tiny / --real-size, --device, --dtype."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--tiny", action="store_true", help="the tiny test checkpoint (default without CUDA)")
    size.add_argument("--real-size", action="store_true", help="the real size even without CUDA (very slow)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    parser.add_argument("--dtype", default="auto", help="auto (default), bfloat16, float16 or float32")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = model_parser(__doc__)
    parser.add_argument(
        "--levels", default=",".join(map(str, DEFAULT_LEVELS)), help="concurrent users, e.g. 1,8"
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=None, help="tokens per answer (tiny 64, real 128)"
    )
    parser.add_argument("--num-crops", type=int, default=None, help="HD crops per image (tiny 4, real 16)")
    parser.add_argument(
        "--max-batch-size", type=int, default=None, help="engine batch size (default: top level)"
    )
    parser.add_argument(
        "--ways",
        default="graphs",
        help=f"the engine's way(s), in order, of: {', '.join(WAYS)}",
    )
    parser.add_argument(
        "--card-levels", default=None, help="levels to run the model card's way at (default: all)"
    )
    args = parser.parse_args(argv)
    args.levels = whole_numbers(parser, "--levels", args.levels)
    args.card_levels = (
        args.levels if args.card_levels is None else whole_numbers(parser, "--card-levels", args.card_levels)
    )
    if not set(args.card_levels) <= set(args.levels):
        parser.error("--card-levels must be some of --levels")
    args.ways = parse_ways(parser, args.ways)
    for name in ("max_new_tokens", "num_crops", "max_batch_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    return args


def whole_numbers(parser: argparse.ArgumentParser, option: str, text: str) -> list[int]:
    try:
        values = sorted({int(value) for value in text.split(",") if value.strip()})
    except ValueError:
        parser.error(f"{option} takes whole numbers separated by commas, e.g. 1,8,16,32")
    if not values or values[0] < 1:
        parser.error(f"{option} must be positive")
    return values


def choose_size(args: argparse.Namespace, device: torch.device) -> str:
    if args.tiny:
        return "tiny"
    if args.real_size:
        return "real"
    return "real" if device.type == "cuda" else "tiny"


@dataclass
class Setup:
    size: str
    loaded: LoadedModel
    config: EngineConfig
    image: Image.Image
    prompt: str
    prompt_tokens: int


def model_inputs(processor, prompt: str, image: Image.Image, device: torch.device) -> BatchFeature:
    """``processor(prompt, [image])`` as the model card calls it, keeping only what the model takes."""
    encoded = processor(prompt, [image], return_tensors="pt")
    return BatchFeature({key: encoded[key] for key in processor.model_input_names}).to(device)


def engine_config(
    args: argparse.Namespace, size: str, loaded: LoadedModel, prompt_tokens: int
) -> EngineConfig:
    """An engine configuration big enough for the top level to run as one batch, never timing out."""
    max_new_tokens = args.max_new_tokens or DEFAULT_MAX_NEW_TOKENS[size]
    batch_size = args.max_batch_size or max(args.levels)
    return EngineConfig(
        model_id=str(loaded.source),
        device=str(loaded.device),
        dtype=str(loaded.dtype).removeprefix("torch."),
        num_crops=loaded.processor.image_processor.num_crops,
        max_new_tokens=max_new_tokens,
        request_timeout_s=REQUEST_TIMEOUT_S,
        max_queued=max(args.levels),
        max_batch_size=batch_size,
        token_budget=batch_size * -(-(prompt_tokens + max_new_tokens) // BLOCK_TOKENS) * BLOCK_TOKENS,
    )


def build_loaded(args: argparse.Namespace) -> tuple[str, LoadedModel]:
    """The model (random weights at real size) and its processor, as the engine would get them."""
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    attention = resolve_attention("auto", device)
    size = choose_size(args, device)
    log.info("building the %s model on %s (%s, %s attention)", size, device, dtype, attention)
    model = build_model(size == "tiny", device, dtype, attention)
    processor = load_processor(size == "tiny")
    processor.image_processor.num_crops = args.num_crops or DEFAULT_NUM_CROPS[size]
    source = TINY_DIR if size == "tiny" else OFFICIAL_DIR
    return size, LoadedModel(model, processor, device, dtype, attention, source)


def build_setup(args: argparse.Namespace) -> Setup:
    """The model, the request, and an engine configuration for the top level."""
    size, loaded = build_loaded(args)
    image, prompt = synthetic_image(*IMAGE_SIZE), build_prompt(Task.DESCRIBE, 1)
    prompt_tokens = int(
        model_inputs(loaded.processor, prompt, image, torch.device("cpu"))["input_ids"].shape[1]
    )
    config = engine_config(args, size, loaded, prompt_tokens)
    return Setup(size, loaded, config, image, prompt, prompt_tokens)


# ----------------------------------------------------------------------------------------------------------
# The two ways


@dataclass(frozen=True)
class Timing:
    """One request, in seconds from the moment the level started (when every request was made)."""

    first_token_s: float
    latency_s: float
    failed: bool = False


class FirstTokenClock(BaseStreamer):
    """Notes when ``generate`` hands out the first new token (its first ``put`` is the prompt)."""

    def __init__(self) -> None:
        self.calls = 0
        self.first_token_at: float | None = None

    def put(self, value: torch.Tensor) -> None:
        self.calls += 1
        if self.calls == 2:
            self.first_token_at = time.perf_counter()

    def end(self) -> None:
        pass


async def our_request(engine: LocalEngine, request: Request, started: float) -> Timing:
    """Stream one answer; the first token's time is when its first text arrives."""
    first = None
    try:
        async for _piece in engine.stream(request):
            if first is None:
                first = time.perf_counter() - started
    except InferenceError as exc:  # e.g. out of GPU memory: counted and reported, the run goes on
        log.warning("request of user %s failed: %s", request.user_id, exc)
        return Timing(0.0, time.perf_counter() - started, failed=True)
    latency = time.perf_counter() - started
    return Timing(latency if first is None else first, latency)


async def run_ours(
    engine: LocalEngine,
    runner: FixedLengthRunner,
    setup: Setup,
    users: int,
    max_new_tokens: int | None = None,
) -> dict:
    """``users`` requests made at once through the engine."""
    tokens_before = runner.tokens_generated
    requests = [
        Request(Task.DESCRIBE, (new_picture(*IMAGE_SIZE),), user_id=user, max_new_tokens=max_new_tokens)
        for user in range(1, users + 1)
    ]
    started = time.perf_counter()
    timings = await asyncio.gather(*(our_request(engine, request, started) for request in requests))
    wall_s = time.perf_counter() - started
    return summary(timings, runner.tokens_generated - tokens_before, wall_s)


def model_card_request(setup: Setup, max_new_tokens: int) -> tuple[float, float, int]:
    """The model card's code for one request: (first token at, finished at, new tokens)."""
    loaded = setup.loaded
    use_language_attention(loaded.model, loaded.attn_implementation)  # as loaded, not as a runner set it
    use_fused_norms(loaded.model, False)
    use_fused_rope(loaded.model, False)
    processor = loaded.processor
    inputs = model_inputs(processor, setup.prompt, setup.image, loaded.device)
    clock = FirstTokenClock()
    with torch.inference_mode():
        output = loaded.model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens,  # the same fixed length as ours, whatever random weights pick
            do_sample=False,
            eos_token_id=processor.tokenizer.eos_token_id,
            pad_token_id=processor.tokenizer.pad_token_id,
            streamer=clock,
        )
    new_ids = output[:, inputs["input_ids"].shape[1] :]
    processor.batch_decode(new_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    synchronize(loaded.device)
    return clock.first_token_at or time.perf_counter(), time.perf_counter(), int(new_ids.shape[1])


def run_model_card(setup: Setup, users: int, max_new_tokens: int) -> dict:
    """``users`` requests made at once, answered one after another."""
    started = time.perf_counter()
    timings, tokens = [], 0
    for _ in range(users):
        first_at, done_at, new_tokens = model_card_request(setup, max_new_tokens)
        timings.append(Timing(first_at - started, done_at - started))
        tokens += new_tokens
    return summary(timings, tokens, time.perf_counter() - started)


def summary(timings: list[Timing], tokens: int, wall_s: float) -> dict:
    answered = [t for t in timings if not t.failed]
    return {
        "requests": len(timings),
        "failed": len(timings) - len(answered),
        "new_tokens": tokens,
        "wall_s": round(wall_s, 3),
        "tok_s": round(tokens / wall_s, 2),
        "ttft_ms": percentiles_ms([t.first_token_s for t in answered], LATENCY_POINTS) if answered else None,
        "latency_ms": percentiles_ms([t.latency_s for t in answered], LATENCY_POINTS) if answered else None,
    }


# ----------------------------------------------------------------------------------------------------------
# Run and report


class Engines:
    """One engine per way in turn, on the same model; each one's runner and its peak memory."""

    def __init__(self, setup: Setup, memory: PeakMemory) -> None:
        self.setup, self.memory = setup, memory
        self.peak_mib: dict[str, float | None] = {}

    @contextlib.asynccontextmanager
    async def engine(self, way: str):
        config = engine_way(self.setup.config, way)
        made: list[FixedLengthRunner] = []

        def factory(_config: EngineConfig) -> FixedLengthRunner:
            made.append(FixedLengthRunner(self.setup.loaded, config))
            return made[-1]

        gc.collect()  # the previous way's runner, now unreferenced, and its cache go first
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        self.memory.start_phase()
        engine = LocalEngine(config, runner_factory=factory)
        await engine.start()
        try:
            yield engine, made[0]
        finally:
            await engine.stop()
            self.peak_mib[way] = self.memory.end_phase()
            made.clear()  # the paged cache goes with its runner, before the next engine allocates its own
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


async def measure_ours(engines: Engines, way: str, levels: list[int]) -> dict[int, dict]:
    async with engines.engine(way) as (engine, runner):
        log.info("warm-up (%s)", way)
        await run_ours(engine, runner, engines.setup, WARMUP_REQUESTS, WARMUP_TOKENS)
        results = {}
        for users in levels:
            log.info("%d concurrent: ours, %s", users, way)
            results[users] = await run_ours(engine, runner, engines.setup, users)
        return results


async def measure_levels(setup: Setup, args: argparse.Namespace, engines: Engines) -> list[dict]:
    ours = {way: await measure_ours(engines, way, args.levels) for way in args.ways}
    engines.memory.start_phase()
    run_model_card(setup, 1, WARMUP_TOKENS)
    card = {}
    for users in args.card_levels:
        log.info("%d concurrent: model card's way (sequential)", users)
        card[users] = run_model_card(setup, users, setup.config.max_new_tokens)
    engines.peak_mib["model_card"] = engines.memory.end_phase()
    results = []
    for users in args.levels:
        basis = users if users in card else max(card)
        first, others = args.ways[0], args.ways[1:]
        level = {"concurrency": users, "ours": ours[first][users], "ours_way": first}
        level.update({way: ours[way][users] for way in others})
        level["model_card"] = card.get(users)
        level["speedup"] = round(level["ours"]["tok_s"] / card[basis]["tok_s"], 2)
        if basis != users:
            level["speedup_basis"] = f"the model card's tokens/s measured at {basis} users"
        if others:
            level["speedup_over"] = {
                way: round(level["ours"]["tok_s"] / ours[way][users]["tok_s"], 2) for way in others
            }
        log.info(
            "%d concurrent: %.1f tok/s, %.2fx the model card's way",
            users,
            level["ours"]["tok_s"],
            level["speedup"],
        )
        results.append(level)
    return results


def target(setup: Setup, levels: list[dict]) -> dict:
    """Whether the top level reached the target: only judged for the real size on a CUDA GPU."""
    at_level = next((level for level in levels if level["concurrency"] == TARGET_LEVEL), None)
    applies = setup.size == "real" and setup.loaded.device.type == "cuda"
    met = None
    if applies and at_level is not None:
        met = at_level["speedup"] >= TARGET_SPEEDUP and at_level["ours"]["failed"] == 0
    return {
        "concurrency": TARGET_LEVEL,
        "min_speedup": TARGET_SPEEDUP,
        "applies_to": "real size on an H100",
        "this_run_applies": applies,
        "met": met,
    }


def run(args: argparse.Namespace) -> dict:
    setup = build_setup(args)
    memory = PeakMemory(setup.loaded.device)
    engines = Engines(setup, memory)
    started = time.perf_counter()
    levels = asyncio.run(measure_levels(setup, args, engines))
    memory.end_phase()
    loaded, config = setup.loaded, setup.config
    return {
        "bench": "throughput",
        "size": setup.size,
        "device": str(loaded.device),
        "device_name": device_name(loaded.device),
        "dtype": config.dtype,
        "attention": loaded.attn_implementation,
        "parameters_b": round(sum(p.numel() for p in loaded.model.parameters()) / 1e9, 3),
        "num_crops": config.num_crops,
        "image": "x".join(map(str, IMAGE_SIZE)),
        "prompt_tokens": setup.prompt_tokens,
        "max_new_tokens": config.max_new_tokens,
        "engine_config": {
            "max_batch_size": config.max_batch_size,
            "token_budget": config.token_budget,
            "batch_window_ms": config.batch_window_ms,
            "prefill_chunk_tokens": config.prefill_chunk_tokens,
        },
        "ways": args.ways,
        "levels": levels,
        "speedup_by_level": {str(level["concurrency"]): level["speedup"] for level in levels},
        "target": target(setup, levels),
        "peak_memory_mib": round(memory.overall_mib, 1),
        "peak_memory_mib_by_way": engines.peak_mib,
        "peak_memory_kind": memory.kind,
        "run_s": round(time.perf_counter() - started, 1),
        **versions(),
    }


def main(argv: list[str] | None = None) -> None:
    run_benchmark("throughput.py", parse_args(argv), run)


if __name__ == "__main__":
    main()
