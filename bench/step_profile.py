"""Where a decoding step's time goes, against the memory-bandwidth limit (steps timed on the calling thread).

    python bench/step_profile.py               # real size on CUDA (tiny without CUDA)
    python bench/step_profile.py --tiny --batch-sizes 1,4 --steps 8
    python bench/step_profile.py --ways graphs --profile

For each way (``--ways``, as bench/throughput.py's: ``graphs``, decoding from CUDA graphs where they run,
``eager``, and graphs with transformers' own parts instead of the fused ones: ``plain-norms``,
``plain-rope``, ``unfused``; default graphs and eager) and batch size B: B copies of the throughput
benchmark's request join the runner and are stepped until every one has its first token (``prefill_ms``;
the paged runner prefills in chunks), then ``--steps`` decoding steps are timed one by one (a step ends
in ``.tolist()``, so each time includes the GPU's work).

The limit: a decoding step must read every weight of the language model once and every cached key and
value of the batch once. ``limit_ms`` is those bytes divided by the device's measured copy bandwidth
(``copy_gb_s``: a large on-device copy, read plus write), and ``share_of_limit`` is ``limit_ms`` over the
measured median step: 1.0 would be a step bound only by memory.

Beside it, the same model's plain forward at batch 1 with transformers' DynamicCache and no attention
mask, which is what ``generate`` does at batch 1. With ``--profile`` the top operators of a few steps
(CPU self time) go to stderr. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
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
from bench.serving import FixedLengthRunner, versions
from bench.throughput import build_setup, engine_way, model_inputs, model_parser, parse_ways
from inference.kernels.paged_cache import PagedStorage
from inference.types import Request, Task

log = logging.getLogger("bench.step_profile")
GB = 1e9


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = model_parser(__doc__)
    parser.add_argument("--num-crops", type=int, default=None)
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--ways", default="graphs,eager", help="ways to time (bench/throughput.py's)")
    parser.add_argument(
        "--check-tokens", type=int, default=32, help="tokens per row for the graphs-vs-eager check"
    )
    parser.add_argument("--profile", action="store_true", help="print the top operators of a few steps")
    args = parser.parse_args(argv)
    args.levels = [int(b) for b in args.batch_sizes.split(",")]
    args.max_new_tokens = answer_length(args.steps, max(args.levels))
    args.max_batch_size = max(args.levels)
    args.ways = parse_ways(parser, args.ways)
    return args


# The first row to join decodes while the others' prompts are prefilled (a step per PREFILL chunk of 2,048
# tokens; a 16-crop prompt is ~2,400), so its answer must outlast those steps too, or rows leave while timed.
JOINING_STEPS_PER_ROW = 2


def answer_length(steps: int, batch: int) -> int:
    """Tokens per answer so that every row of ``batch`` still runs through ``steps`` steps after the last
    has joined."""
    return steps + 8 + JOINING_STEPS_PER_ROW * batch


def check_every_row_runs(runner, batch: int) -> None:
    if len(runner.running_ids) != batch:
        raise RuntimeError(f"{batch - len(runner.running_ids)} of {batch} rows ended while being measured")


def copy_gb_s(device: torch.device) -> float:
    """The device's memory bandwidth as a large copy sees it: bytes read plus bytes written, per second."""
    size = (1 << 30) if device.type == "cuda" else (1 << 27)
    source = torch.empty(size, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    target.copy_(source)
    synchronize(device)
    repeats = 10
    start = time.perf_counter()
    for _ in range(repeats):
        target.copy_(source)
    synchronize(device)
    seconds = time.perf_counter() - start
    del source, target
    return round(2 * size * repeats / seconds / GB, 1)


def language_weight_bytes(model) -> int:
    """The weights a decoding step reads: the language model, not the vision tower nor the embeddings."""
    return sum(
        p.numel() * p.element_size()
        for name, p in model.named_parameters()
        if "vision_embed_tokens" not in name and "embed_tokens" not in name
    )


def kv_bytes_per_token(loaded) -> int:
    config = loaded.model.config
    heads = config.num_attention_heads
    return PagedStorage.bytes_per_token(
        config.num_hidden_layers,
        config.num_key_value_heads or heads,
        getattr(config, "head_dim", None) or config.hidden_size // heads,
        loaded.dtype,
    )


def time_runner_steps(setup, runner, batch: int, steps: int, profile: bool) -> dict:
    prepared = runner.prepare(Request(Task.DESCRIBE, (setup.image,), user_id=0))
    # Each row computes its whole prompt: no picture names, so nothing is reused from an earlier batch size.
    row = dataclasses.replace(prepared, max_new_tokens=answer_length(steps, batch), picture_hashes=())
    admit = [(i, row) for i in range(batch)]
    runner.reset()
    device = setup.loaded.device
    synchronize(device)
    start = time.perf_counter()
    answered: set[int] = set()
    events = runner.step(admit, [])
    while True:
        answered |= {event.request_id for event in events}
        if len(answered) == batch:
            break
        events = runner.step([], [])
    prefill_ms = (time.perf_counter() - start) * 1000
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        runner.step([], [])
        times.append((time.perf_counter() - start) * 1000)
    check_every_row_runs(runner, batch)
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


def decode_run(setup, way: str, batch: int, steps: int) -> tuple[bool, torch.Tensor, torch.Tensor]:
    """``batch`` different prompts joined, then ``steps`` decoding steps: (graphs used, tokens, logits)."""
    runner = FixedLengthRunner(setup.loaded, engine_way(setup.config, way))
    admit = []
    for i in range(batch):
        request = Request(Task.DESCRIBE, (setup.image,), question=f"What is in part {i + 1} of the picture?")
        admit.append(
            (i, dataclasses.replace(runner.prepare(request), max_new_tokens=answer_length(steps, batch)))
        )
    answered: set[int] = set()
    events = runner.step(admit, [])
    while len(answered | {event.request_id for event in events}) < batch:
        answered |= {event.request_id for event in events}
        events = runner.step([], [])
    tokens, logits = [], []
    for _ in range(steps):
        runner.step([], [])
        step_logits = runner.decode_step.logits[:batch].float()
        logits.append(step_logits.cpu())
        tokens.append(step_logits.argmax(-1).cpu())
    check_every_row_runs(runner, batch)
    graphs = bool(runner.decode_step.graphs)
    runner.reset()
    del runner
    gc.collect()
    return graphs, torch.stack(tokens), torch.stack(logits)


def graphs_against_eager(setup, batch: int, steps: int) -> dict:
    """The same prompts decoded from CUDA graphs and eagerly: the share of greedy tokens that agree, and
    the largest logit difference over the steps before the first disagreement (after it, the rows'
    contexts differ and their logits are no longer comparable)."""
    graphs, graph_tokens, graph_logits = decode_run(setup, "graphs", batch, steps)
    _, eager_tokens, eager_logits = decode_run(setup, "eager", batch, steps)
    agree = graph_tokens == eager_tokens
    first_difference = int((~agree).any(1).float().argmax()) if not bool(agree.all()) else steps
    difference = (graph_logits[:first_difference] - eager_logits[:first_difference]).abs()
    return {
        "graphs_used": graphs,
        "rows": batch,
        "steps": steps,
        "identical_token_share": round(float(agree.float().mean()), 4),
        "rows_identical": int(agree.all(0).sum()),
        "steps_before_first_difference": first_difference,
        "max_logit_difference": round(float(difference.max()), 5) if first_difference else None,
    }


def against_limit(timing: dict, read_bytes: int, bandwidth_gb_s: float) -> dict:
    limit_ms = read_bytes / (bandwidth_gb_s * GB) * 1000
    return {
        **timing,
        "read_gb_per_step": round(read_bytes / GB, 3),
        "limit_ms": round(limit_ms, 3),
        "share_of_limit": round(limit_ms / timing["step_ms_median"], 3),
        "tok_s": round(1000 * timing["batch"] / timing["step_ms_median"], 1),
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
    bandwidth = copy_gb_s(loaded.device)
    weights = language_weight_bytes(loaded.model)
    per_token = kv_bytes_per_token(loaded)
    result = {
        "bench": "step_profile",
        "size": setup.size,
        "device": str(loaded.device),
        "dtype": str(loaded.dtype).removeprefix("torch."),
        "attention": loaded.attn_implementation,
        "prompt_tokens": setup.prompt_tokens,
        "copy_gb_s": bandwidth,
        "language_weights_gb": round(weights / GB, 3),
        "kv_bytes_per_token": per_token,
        "plain_forward_batch1_step_ms": time_plain_forward(setup, args.steps),
        "runner": {},
    }
    log.info("graphs against eager steps: %d rows, %d steps", min(8, max(args.levels)), args.check_tokens)
    result["graphs_against_eager"] = graphs_against_eager(setup, min(8, max(args.levels)), args.check_tokens)
    context = setup.prompt_tokens + args.steps // 2  # keys a row has, on average, while it is timed
    for way in args.ways:
        runner = FixedLengthRunner(loaded, engine_way(setup.config, way))
        result["runner"][way] = {}
        for batch in args.levels:
            log.info("%s, batch %d", way, batch)
            timing = {"batch": batch, **time_runner_steps(setup, runner, batch, args.steps, args.profile)}
            read = weights + batch * context * per_token
            result["runner"][way][str(batch)] = against_limit(timing, read, bandwidth)
        del runner  # its KV cache goes before the next runner allocates its own
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    result.update(versions())
    return result


def main(argv: list[str] | None = None) -> None:
    run_benchmark("step_profile", parse_args(argv), run)


if __name__ == "__main__":
    main()
