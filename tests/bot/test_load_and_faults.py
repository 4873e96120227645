"""The load-and-fault test: 100 people, 500 requests in a burst over 5 channels, faults injected.

Every request must end in exactly one visible final state, with no place in line, "working"
message or half answer left anywhere, no unhandled error, and previews within each channel's
edit budget. The scenario itself is in ``tests/load_scenario.py`` (``bench/load.py`` runs it too).
"""

from __future__ import annotations

import logging

import simcord

from tests.conftest import image_bytes
from tests.fakes import SlottedFakeEngine
from tests.load_scenario import make_bot, run_scenario, summary

log = logging.getLogger(__name__)


async def test_every_request_ends_in_one_visible_final_state_under_load_and_faults():
    engine = SlottedFakeEngine(None, slots=8, max_waiting=200, piece_delay_s=0.25, piece_size=200)
    bot = make_bot(engine)
    async with simcord.run(bot, check_errors=False) as env:
        counts = await run_scenario(
            env, bot, engine, people=100, requests=500, channels=5, image=image_bytes()
        )
    await bot.close()
    # In the test's captured log (shown when it fails); bench/load.py prints the same figures as JSON.
    log.info("load and faults: %s; %s s", summary(counts), counts["wall_s"])
    log.info("Discord calls per channel %s, faults %s", counts["discord_calls_per_channel"], counts["faults"])

    assert counts["lost"] == 0, counts["lost_examples"]
    assert counts["stale"] == 0, counts["stale_examples"]
    assert counts["unhandled_errors"] == 0, counts["unhandled_error_examples"]
    finals = counts["answered"] + counts["refused"] + counts["failed"] + counts["stopped"]
    assert finals == counts["requests"] == 500
    # every kind of final state happened, so each path was exercised
    assert min(counts["answered"], counts["refused"], counts["failed"], counts["stopped"]) > 0
    assert counts["faults"]["deleted_answers"] > 0 and counts["faults"]["deleted_commands"] > 0
    assert counts["preview_budget_respected"], counts["max_previews_in_any_window"]
