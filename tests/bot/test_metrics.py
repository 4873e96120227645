"""The owner's view: Prometheus metrics after real requests, and /status for the owner only."""

from __future__ import annotations

import urllib.request

import pytest

from bot.about import version
from bot.metrics import Metrics
from bot.reply import JobRecord, Outcome
from inference import EngineStats, OutOfMemory
from tests.conftest import acknowledge_errors, image_bytes

PNG = ("a.png", image_bytes())


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


@pytest.mark.bot_settings(metrics_port=0)  # any free port on 127.0.0.1
async def test_the_metrics_endpoint_counts_requests_by_task_and_outcome(world, fake_engine):
    bot = world.env.bot
    fake_engine.stats = lambda: EngineStats(waiting=3, running=2, tokens_generated=57, out_of_memory=1)
    fake_engine.answer_next("An answer.", OutOfMemory(while_answering=True))
    await world.member.slash(world.channel, "describe", image=PNG)
    await world.member.slash(world.channel, "describe", image=PNG)
    await world.member.send(world.channel, "!ocr", attachments=[PNG])
    await world.member.slash(world.channel, "describe", image=("notes.txt", b"text"))
    acknowledge_errors(world.env)

    text = scrape(bot.metrics._server.server_address[1])

    assert 'phi3v_bot_requests_total{outcome="answer",task="describe"} 1.0' in text
    assert 'phi3v_bot_requests_total{outcome="failure",task="describe"} 1.0' in text
    assert 'phi3v_bot_requests_total{outcome="answer",task="ocr"} 1.0' in text
    assert 'phi3v_bot_requests_total{outcome="refusal",task="describe"} 1.0' in text
    assert "phi3v_bot_answer_seconds_count 2.0" in text
    assert "phi3v_bot_previews_skipped_total 0.0" in text  # a slow channel's skipped previews, counted
    assert "phi3v_bot_queue_length 3.0" in text and "phi3v_bot_batch_size 2.0" in text
    assert "phi3v_bot_tokens_generated_total 57.0" in text and "phi3v_bot_out_of_memory_total 1.0" in text


async def test_without_a_port_no_server_runs(world):
    assert world.env.bot.settings.metrics_port is None
    assert world.env.bot.metrics._server is None


async def test_status_shows_the_owner_the_queue_and_the_pace(world, fake_engine):
    bot = world.env.bot
    fake_engine.stats = lambda: EngineStats(
        waiting=4,
        running=8,
        tokens_generated=1234,
        answers_finished=21,
        hardware="cuda:0, bfloat16, sdpa attention",
        memory_bytes=21_500_000_000,
    )
    bot.owner_ids = {world.member.id}
    result = await world.member.slash(world.channel, "status")
    assert result.ephemeral
    text = result.response.content
    assert "**Model:** microsoft/Phi-3-vision-128k-instruct" in text
    assert "cuda:0, bfloat16, sdpa attention, 21.5 GB in use" in text
    assert "8 answering, 4 waiting" in text and "21 answers, 1,234 tokens" in text
    assert "**Up for:**" in text and f"version {version()}" in text and version() != "unknown"
    assert "0 prompt tokens reused" in text


async def test_status_is_refused_to_everyone_else(world):
    world.env.bot.owner_ids = {1}
    result = await world.member.slash(world.channel, "status")
    assert result.ephemeral and result.response.content == "Only the bot's owner can see its status."
    acknowledge_errors(world.env)


def test_rates_count_the_last_minutes():
    now = [1000.0]
    stats = EngineStats()
    metrics = Metrics(lambda: stats, clock=lambda: now[0])

    done = JobRecord("describe", Outcome.ANSWER, 0.0, 1.0, 2.0, discord_retries=0, previews_skipped=0)

    for _ in range(6):
        now[0] += 10
        stats.tokens_generated += 100
        metrics.reply_closed(done)
    rates = metrics.rates()
    assert rates.answers_per_min == pytest.approx(6 * 60 / 60)
    assert rates.tokens_per_s == pytest.approx(600 / 60)
