"""Greedy agreement with float32 of what an owner can pick on a CPU: bf16 (what ``DTYPE=auto`` picks on a
CPU that computes it natively: AMX, AVX-512 BF16) and 8-bit weights (``QUANTIZATION=8bit``, on float32 or
bf16 activations).

    python bench/precision.py                  # the tiny checkpoint, every fixture and example picture
    python bench/precision.py --tokens 8 --images 2 --ways bf16,8bit

The same runner answers each picture once in float32 and once each way (greedy, stop tokens off, so every
answer is ``--tokens`` long); reported per way: how many first tokens and whole answers are identical to
float32's (and bf16's), and for each answer how many tokens agree before the first difference. On a CPU
without native bf16 the bf16 runs are emulated and slow, but their numbers are the same. The tiny
checkpoint's weights are random and its logits nearly flat, so any rounding flips close calls: it bounds
the trade from below, a trained model's peaked logits disagree less. Progress goes to stderr; stdout gets
one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: find the repo's packages

from PIL import Image

from bench.serving import versions
from inference.loading import load
from inference.serving.startup import start_runner
from inference.types import EngineConfig, Request, Task

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "fixtures" / "phi3v-tiny"


WAYS = {  # name: (DTYPE, QUANTIZATION)
    "bf16": ("bfloat16", "none"),
    "8bit": ("float32", "8bit"),
    "8bit-bf16": ("bfloat16", "8bit"),
}


def greedy_answers(dtype: str, quantization: str, requests: list[Request], tokens: int) -> list[list[int]]:
    config = EngineConfig(
        model_id=str(TINY / "checkpoint"),
        device="cpu",
        dtype=dtype,
        quantization=quantization,
        max_new_tokens=tokens,
        token_budget=8192,
    )
    runner = start_runner(load(config), config)
    runner.stop_ids = set()
    answers = []
    for request in requests:
        runner.step([(1, runner.prepare(request))], [])
        row = runner.rows[1]
        while runner.running_ids:
            runner.step([], [])
        answers.append(list(row.decoder.ids))
    return answers


def agreement(reference: list[list[int]], other: list[list[int]]) -> dict:
    return {
        "first_token_same": sum(x[0] == y[0] for x, y in zip(reference, other)),
        "whole_answer_same": sum(x == y for x, y in zip(reference, other)),
        "identical_prefix_tokens": [
            next((i for i, (a, b) in enumerate(zip(x, y)) if a != b), len(x))
            for x, y in zip(reference, other)
        ],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=24, help="tokens per answer")
    parser.add_argument("--images", type=int, default=None, help="how many pictures (default: all)")
    parser.add_argument("--ways", default=",".join(WAYS), help=f"comma-separated, of {', '.join(WAYS)}")
    args = parser.parse_args(argv)
    ways = [way for way in args.ways.split(",") if way]
    unknown = [way for way in ways if way not in WAYS]
    if unknown:
        parser.error(f"unknown way {unknown[0]!r}: choose among {', '.join(WAYS)}")
    paths = sorted((TINY / "images").glob("*.png")) + sorted((ROOT / "docs" / "examples").glob("*"))
    paths = paths[: args.images] if args.images else paths
    requests = [Request(Task.DESCRIBE, (Image.open(path).convert("RGB"),)) for path in paths]
    answers = {"float32": greedy_answers("float32", "none", requests, args.tokens)}
    answers |= {way: greedy_answers(*WAYS[way], requests, args.tokens) for way in ways}
    references = [name for name in ("float32", "bf16") if name in answers]
    by_way = {
        way: {f"against_{reference}": agreement(answers[reference], answers[way]) for reference in references}
        for way in ways
    }
    result = {
        "bench": "precision",
        "size": "tiny",
        "requests": len(requests),
        "tokens_each": args.tokens,
        "by_way": by_way,
        **versions(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
