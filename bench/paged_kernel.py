"""The Triton paged-decode kernel alone, at Phi-3-vision's shapes: its schedules measured side by side.

    python bench/paged_kernel.py                        # a CUDA GPU: rows 1, 8 and 32, every schedule
    TRITON_INTERPRET=1 python bench/paged_kernel.py --smoke   # the CPU, under Triton's interpreter: runs it

One query per row and head (32 heads of 96, as many key/value heads, bfloat16) against ``--context`` keys
each, in blocks of 256 laid out in a shuffled pool as the engine's cache holds them. For each number of
rows, every schedule (keys per loop iteration, warps, loop stages in flight, programs per row and head) is
checked against the plain kernel (gather, then PyTorch's sdpa) and timed with ``triton.testing.do_bench``;
reported: microseconds per call (the split merge included), the bytes of keys and values read per second
and the share of the device's copy bandwidth, for the kernel's current schedule, the plain kernel and the
fastest few. Progress goes to stderr; stdout gets one JSON line. The engine calls the kernel once per
layer per decoding step (32 layers).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: find the repo's packages

import torch

from bench.engine import run_benchmark
from bench.serving import versions
from inference.kernels.attention_backends import PLAIN, gather_decode
from inference.kernels.paged_cache import PagedBatch
from inference.kernels.triton_paged import MAX_SPLITS, STAGES, TILE, WARPS, paged_decode, splits_for

log = logging.getLogger("bench.paged_kernel")

HEADS, HEAD_DIM, BLOCK_TOKENS = 32, 96, 256  # Phi-3-vision's attention and the engine's cache blocks
SCALE = HEAD_DIM**-0.5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", default="1,8,32", help="rows (people decoding at once), e.g. 1,8,32")
    parser.add_argument("--context", type=int, default=2400, help="keys per row (a 16-crop prompt: ~2,400)")
    parser.add_argument("--tiles", default="32,64,128", help="keys per loop iteration to try")
    parser.add_argument("--warps", default="4,8", help="warps per program to try")
    parser.add_argument("--stages", default="1,2,3", help="loop stages in flight to try")
    parser.add_argument("--top", type=int, default=5, help="fastest schedules reported per row count")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and one schedule: checks it runs")
    args = parser.parse_args(argv)
    if args.smoke:
        args.rows, args.context, args.tiles, args.warps, args.stages = "1", 100, "64", "4", "1"
    for name in ("rows", "tiles", "warps", "stages"):
        try:
            setattr(args, name, [int(value) for value in getattr(args, name).split(",") if value.strip()])
        except ValueError:
            parser.error(f"--{name} takes whole numbers separated by commas")
    if args.context < 1:
        parser.error("--context must be positive")
    return args


def split_choices(rows: int, device: torch.device) -> list[int]:
    """The kernel's own choice and its neighbours (half, twice and four times as many programs per row and
    head)."""
    chosen = splits_for(rows, HEADS, device)
    return sorted({max(1, chosen // 2), chosen, min(MAX_SPLITS, chosen * 2), min(MAX_SPLITS, chosen * 4)})


def inputs(rows: int, context: int, device: torch.device) -> tuple:
    generator = torch.Generator().manual_seed(rows)
    per_row = -(-context // BLOCK_TOKENS)
    blocks = rows * per_row + 1
    keys, values = (
        torch.randn(blocks, BLOCK_TOKENS, HEADS, HEAD_DIM, generator=generator).to(device, torch.bfloat16)
        for _ in range(2)
    )
    table = (
        torch.randperm(blocks, generator=generator)[: rows * per_row].reshape(rows, per_row).int().to(device)
    )
    lengths = torch.full((rows,), context, dtype=torch.int32, device=device)
    query = torch.randn(rows, HEADS, HEAD_DIM, generator=generator).to(device, torch.bfloat16)
    return query, keys, values, table, lengths


def plain(query, keys, values, table, lengths, context: int) -> torch.Tensor:
    rows = query.shape[0]
    batch = PagedBatch(
        storage=None,
        slots=None,
        cu_seq_q=None,
        cu_seq_k=None,
        lengths=lengths,
        block_table=table,
        q_lengths=[1] * rows,
        k_lengths=[context] * rows,
        backend=PLAIN,
    )
    return gather_decode(query, keys, values, table, lengths, context, batch, SCALE)


def time_us(fn, device: torch.device) -> float:
    if device.type == "cuda":
        import triton.testing

        return 1000 * triton.testing.do_bench(fn, warmup=10, rep=40)
    started = time.perf_counter()  # the interpreter: one call, to show it runs (not a speed)
    fn()
    return (time.perf_counter() - started) * 1e6


def figures(us: float, read_bytes: int, copy_gb_s: float | None) -> dict:
    gb_s = read_bytes / (us * 1e-6) / 1e9
    result = {"us": round(us, 2), "kv_gb_s": round(gb_s, 1)}
    if copy_gb_s:
        result["share_of_copy_bandwidth"] = round(gb_s / copy_gb_s, 3)
    return result


def copy_bandwidth(device: torch.device) -> float | None:
    """Bytes read plus written per second by a 1 GiB copy on the device (as bench/step_profile.py has it)."""
    if device.type != "cuda":
        return None
    source = torch.empty(1 << 30, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    us = time_us(lambda: target.copy_(source), device)
    return round(2 * source.numel() / (us * 1e-6) / 1e9, 1)


def measure_rows(rows: int, args: argparse.Namespace, device: torch.device, copy_gb_s: float | None) -> dict:
    query, keys, values, table, lengths = inputs(rows, args.context, device)
    read_bytes = 2 * rows * HEADS * args.context * HEAD_DIM * keys.element_size()
    expected = plain(query, keys, values, table, lengths, args.context).float()
    tolerance = 2e-2 * float(expected.abs().max())
    schedules = []
    for splits, tile, warps, stages in itertools.product(
        split_choices(rows, device), args.tiles, args.warps, args.stages
    ):
        schedule = {"splits": splits, "tile": tile, "warps": warps, "stages": stages}

        def call(splits=splits, tile=tile, warps=warps, stages=stages):
            return paged_decode(
                query,
                keys,
                values,
                table,
                lengths,
                SCALE,
                None,
                splits,
                tile=tile,
                warps=warps,
                stages=stages,
            )

        try:
            error = float((call().float() - expected).abs().max())
        except Exception as exc:  # a schedule the compiler refuses (e.g. out of shared memory) is reported
            log.info("rows %d %s: failed: %s", rows, schedule, str(exc).splitlines()[0][:200])
            schedules.append({**schedule, "failed": str(exc).splitlines()[0][:200]})
            continue
        if error > tolerance:
            log.info("rows %d %s: WRONG (max difference %.4f)", rows, schedule, error)
            schedules.append({**schedule, "wrong": round(error, 5)})
            continue
        schedules.append({**schedule, **figures(time_us(call, device), read_bytes, copy_gb_s)})
        log.info("rows %d %s: %.1f us", rows, schedule, schedules[-1]["us"])
    timed = sorted((s for s in schedules if "us" in s), key=lambda s: s["us"])
    current = {"splits": splits_for(rows, HEADS, device), "tile": TILE, "warps": WARPS, "stages": STAGES}
    current_us = next((s["us"] for s in timed if {k: s[k] for k in current} == current), None)
    plain_us = time_us(lambda: plain(query, keys, values, table, lengths, args.context), device)
    return {
        "rows": rows,
        "read_mb": round(read_bytes / 1e6, 1),
        "current": {**current, **(figures(current_us, read_bytes, copy_gb_s) if current_us else {})},
        "plain": figures(plain_us, read_bytes, copy_gb_s),
        "fastest": timed[: args.top],
        "wrong_or_failed": [s for s in schedules if "us" not in s],
        "schedules_tried": len(schedules),
    }


def run(args: argparse.Namespace) -> dict:
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    if not (torch.cuda.is_available() or interpreted):
        sys.exit(
            "bench/paged_kernel.py: needs a CUDA GPU (or TRITON_INTERPRET=1 with --smoke, to see it run)"
        )
    device = torch.device("cpu" if interpreted else "cuda")
    copy_gb_s = copy_bandwidth(device)
    result = {
        "bench": "paged_kernel",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (interpreter)",
        "heads": HEADS,
        "head_dim": HEAD_DIM,
        "block_tokens": BLOCK_TOKENS,
        "context": args.context,
        "copy_gb_s": copy_gb_s,
        "by_rows": [measure_rows(rows, args, device, copy_gb_s) for rows in args.rows],
    }
    result.update(versions())
    return result


def main(argv: list[str] | None = None) -> None:
    run_benchmark("paged_kernel", parse_args(argv), run)


if __name__ == "__main__":
    main()
