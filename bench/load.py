"""Many people at once, with faults injected: what each person ends up seeing, as one JSON line.

    python bench/load.py                                   # 100 people, 500 requests, 5 channels
    python bench/load.py --people 200 --requests 1000 --channels 10 --seed 3

Runs ``tests/load_scenario.py`` (the scenario of ``tests/bot/test_load_and_faults.py``) through
simcord: the real bot, a fake engine with 8 answers at once and a bounded line (no model, so this
measures the Discord side: replies, edit budgets, retries, shutdown), Discord 429s and 5xx,
deleted messages, a permission removed mid-answer, model failures and a shutdown with people still
in line. Needs the dev extras (simcord). Keys, counted in requests: ``requests``, ``answered``,
``refused``, ``failed``, ``stopped``, ``lost`` (no final state at all) and ``stale`` (a message
still showing a place in line, "working" or a half answer); plus the Discord calls per channel,
the preview edits per channel against the edit budget, and the wall time. Progress goes to
stderr; stdout gets exactly one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: find the repo's packages

import discord  # noqa: E402
import simcord  # noqa: E402

from tests.conftest import image_bytes  # noqa: E402
from tests.fakes import SlottedFakeEngine  # noqa: E402
from tests.load_scenario import make_bot, run_scenario, summary  # noqa: E402

SLOTS = 8
PIECE_DELAY_S = 0.25
PIECE_SIZE = 200


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--people", type=int, default=100, help="members sending requests")
    parser.add_argument("--requests", type=int, default=500, help="requests in the burst")
    parser.add_argument("--channels", type=int, default=5, help="channels they are spread over")
    parser.add_argument("--seed", type=int, default=0, help="seed: answer lengths, who deletes what")
    parser.add_argument("--max-waiting", type=int, default=200, help="the fake engine's line (then: busy)")
    args = parser.parse_args(argv)
    if min(args.people, args.requests, args.channels) < 1:
        parser.error("--people, --requests and --channels must be at least 1")
    return args


async def run(args: argparse.Namespace) -> dict:
    engine = SlottedFakeEngine(
        None, slots=SLOTS, max_waiting=args.max_waiting, piece_delay_s=PIECE_DELAY_S, piece_size=PIECE_SIZE
    )
    bot = make_bot(engine)
    async with simcord.run(bot, check_errors=False) as env:
        counts = await run_scenario(
            env,
            bot,
            engine,
            people=args.people,
            requests=args.requests,
            channels=args.channels,
            seed=args.seed,
            image=image_bytes(),
        )
    await bot.close()
    logging.getLogger("bench.load").info("%s", summary(counts))
    return {
        "benchmark": "load.py",
        **counts,
        "engine": {"kind": "fake", "slots": SLOTS, "piece_delay_s": PIECE_DELAY_S, "piece_chars": PIECE_SIZE},
        "discord.py": discord.__version__,
        "python": platform.python_version(),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("bench.load").setLevel(logging.INFO)
    logging.getLogger("bot").setLevel(logging.ERROR)  # thousands of expected refusals otherwise
    print(json.dumps(asyncio.run(run(args))), flush=True)


if __name__ == "__main__":
    main()
