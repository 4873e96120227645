"""Where a decoding step's time goes: ``ModelRunner`` steps timed (and profiled) on the calling thread.

    python bench/step_profile.py               # real size on CUDA (tiny without CUDA)
    python bench/step_profile.py --tiny --batch-sizes 1,4 --steps 8

For each batch size B: B copies of the throughput benchmark's request are prefilled together, then
``--steps`` decoding steps are timed one by one (``ModelRunner.step`` ends in ``.tolist()``, so each
time includes the GPU's work). Beside it, the same model's plain forward at batch 1 with transformers'
DynamicCache and no attention mask, which is what ``generate`` does at batch 1. With ``--profile`` the
top operators of a few steps (CPU self time) go to stderr. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from transformers import DynamicCache

from bench.engine import run_benchmark, synchronize
from bench.serving import versions
from bench.throughput import build_setup, model_inputs
from inference.runner import Prepared
from inference.types import Request, Task

log = logging.getLogger("bench.step_profile")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--tiny", action="store_true")
    size.add_argument("--real-size", action="store_true")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--num-crops", type=int, default=None)
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--profile", action="store_true", help="print the top operators of a few steps")
    args = parser.parse_args(argv)
    args.levels = [int(b) for b in args.batch_sizes.split(",")]
    args.max_new_tokens = args.steps + 8
    args.max_batch_size = max(args.levels)
    return args


def time_runner_steps(setup, batch: int, steps: int, profile: bool) -> dict:
    runner = setup.runner
    prepared = runner.prepare(Request(Task.DESCRIBE, (setup.image,), user_id=0))
    admit = [
        (i, Prepared(prepared.input_ids, prepared.pixel_values, prepared.image_sizes, steps + 8))
        for i in range(batch)
    ]
    runner.reset()
    device = setup.loaded.device
    synchronize(device)
    start = time.perf_counter()
    runner.step(admit, [])
    prefill_ms = (time.perf_counter() - start) * 1000
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        runner.step([], [])
        times.append((time.perf_counter() - start) * 1000)
    if profile:
        with torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU]
            + ([torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else [])
        ) as prof:
            for _ in range(4):
                runner.step([], [])
        print(f"--- batch {batch}: top operators over 4 steps ---", file=sys.stderr)
        table = prof.key_averages()
        print(table.table(sort_by="self_cpu_time_total", row_limit=25), file=sys.stderr)
        if device.type == "cuda":
            print(table.table(sort_by="self_device_time_total", row_limit=15), file=sys.stderr)
    runner.reset()
    return {
        "prefill_ms": round(prefill_ms, 1),
        "step_ms_median": round(statistics.median(times), 2),
        "step_ms_min": round(min(times), 2),
    }


def time_plain_forward(setup, steps: int) -> float:
    """Batch 1, DynamicCache, no attention mask: the per-token work of ``generate`` without its extras."""
    model, device = setup.loaded.model, setup.loaded.device
    inputs = model_inputs(setup.loaded.processor, setup.prompt, setup.image, device)
    cache = DynamicCache()
    with torch.inference_mode():
        logits = model(**inputs, cache=cache, use_cache=True, logits_to_keep=1).logits
        token = logits[:, -1].argmax(-1, keepdim=True)
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            logits = model(input_ids=token, cache=cache, use_cache=True).logits
            token = logits[:, -1].argmax(-1, keepdim=True)
            token.tolist()
            synchronize(device)
            times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 2)


def run(args: argparse.Namespace) -> dict:
    setup = build_setup(args)
    loaded = setup.loaded
    result = {
        "bench": "step_profile",
        "size": setup.size,
        "device": str(loaded.device),
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "attention": loaded.attn_implementation,
        "prompt_tokens": setup.prompt_tokens,
        "plain_forward_batch1_step_ms": time_plain_forward(setup, args.steps),
        "runner": {},
    }
    for batch in args.levels:
        log.info("batch %d", batch)
        result["runner"][str(batch)] = time_runner_steps(setup, batch, args.steps, args.profile)
    result.update(versions())
    return result


def main(argv: list[str] | None = None) -> None:
    run_benchmark("step_profile", parse_args(argv), run)


if __name__ == "__main__":
    main()
