"""Greedy agreement of bf16 with float32: what an owner trades when ``DTYPE=auto`` picks bf16 on a CPU that
computes it natively (AMX, AVX-512 BF16).

    python bench/precision.py                  # the tiny checkpoint, every fixture and example picture
    python bench/precision.py --tokens 8 --images 2

The same runner answers each picture once in float32 and once in bf16 (greedy, stop tokens off, so every
answer is ``--tokens`` long); reported: how many first tokens and whole answers are identical, and for each
answer how many tokens agree before the first difference. On a CPU without native bf16 the bf16 run is
emulated and slow, but its numbers are the same. The tiny checkpoint's weights are random and its logits
nearly flat, so any rounding flips close calls: it bounds the trade from below, a trained model's peaked
logits disagree less. Progress goes to stderr; stdout gets one JSON line.
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
from inference.runner import ModelRunner
from inference.types import EngineConfig, Request, Task

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "fixtures" / "phi3v-tiny"


def greedy_answers(dtype: str, requests: list[Request], tokens: int) -> list[list[int]]:
    config = EngineConfig(
        model_id=str(TINY / "checkpoint"), device="cpu", dtype=dtype, max_new_tokens=tokens, token_budget=8192
    )
    runner = ModelRunner(load(config), config)
    runner.stop_ids = set()
    answers = []
    for request in requests:
        runner.step([(1, runner.prepare(request))], [])
        row = runner.rows[1]
        while runner.running_ids:
            runner.step([], [])
        answers.append(list(row.decoder.ids))
    return answers


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=24, help="tokens per answer")
    parser.add_argument("--images", type=int, default=None, help="how many pictures (default: all)")
    args = parser.parse_args(argv)
    paths = sorted((TINY / "images").glob("*.png")) + sorted((ROOT / "docs" / "examples").glob("*"))
    paths = paths[: args.images] if args.images else paths
    requests = [Request(Task.DESCRIBE, (Image.open(path).convert("RGB"),)) for path in paths]
    full, half = (greedy_answers(dtype, requests, args.tokens) for dtype in ("float32", "bfloat16"))
    prefixes = [next((i for i, (a, b) in enumerate(zip(x, y)) if a != b), len(x)) for x, y in zip(full, half)]
    result = {
        "bench": "precision",
        "size": "tiny",
        "requests": len(requests),
        "tokens_each": args.tokens,
        "first_token_same": sum(x[0] == y[0] for x, y in zip(full, half)),
        "whole_answer_same": sum(x == y for x, y in zip(full, half)),
        "identical_prefix_tokens": prefixes,
        **versions(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
