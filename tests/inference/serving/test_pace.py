"""The CPU's measured pace: its arithmetic, the crops a slow CPU reads pictures at, the request limit and
waits it sets, and that measuring leaves the model as it was."""

from __future__ import annotations

import logging

import pytest
import torch

from inference.loading import load
from inference.serving import pace
from inference.serving.cache_size import PROMPT_TEXT_TOKENS, image_tokens
from inference.serving.engine import LocalEngine
from inference.serving.pace import CPU_CROPS, Pace
from inference.serving.startup import start_runner
from inference.types import DEFAULT_REQUEST_TIMEOUT_S, TYPICAL_ANSWER_TOKENS, Request, Task
from tests.fakes import ScriptedRunner
from tests.inference.serving.test_engine import IMAGE
from tests.inference.serving.test_runner import tiny

SLOW = Pace(crop_s=2.0, prompt_token_s=0.05, token_s=0.5)  # a small CPU at real size, roughly
FAST = Pace(crop_s=0.01, prompt_token_s=0.0001, token_s=0.01)


def test_an_answer_is_its_crops_its_prompt_and_its_tokens():
    # 16 crops: a 4x4 grid plus the whole picture, 17 through the tower; the prompt as the cache counts it.
    assert SLOW.first_text_s(16) == pytest.approx(17 * 2.0 + (image_tokens(16) + PROMPT_TEXT_TOKENS) * 0.05)
    assert SLOW.first_text_s(4) == pytest.approx(5 * 2.0 + (image_tokens(4) + PROMPT_TEXT_TOKENS) * 0.05)
    assert SLOW.answer_s(4, 100) == pytest.approx(SLOW.first_text_s(4) + 100 * 0.5)


def test_the_automatic_request_limit_is_three_times_the_longest_answer_and_never_below_the_default():
    assert SLOW.request_timeout_s(4, 512) == round(3 * SLOW.answer_s(4, 512))
    assert SLOW.request_timeout_s(4, 512) > DEFAULT_REQUEST_TIMEOUT_S
    assert FAST.request_timeout_s(16, 512) == DEFAULT_REQUEST_TIMEOUT_S


def test_a_slow_cpu_reads_pictures_at_fewer_crops_unless_told_otherwise():
    assert pace.crops_for(SLOW, None, 16) == CPU_CROPS
    assert pace.crops_for(SLOW, 16, 16) == 16  # NUM_CROPS set: the owner's choice
    assert pace.crops_for(SLOW, None, 2) == 2  # already fewer
    assert pace.crops_for(FAST, None, 16) == 16


def test_measuring_times_real_work_and_leaves_the_attention_as_it_was():
    loaded = load(tiny())
    model = loaded.model
    before = model.config._attn_implementation
    measured = pace.measure(model, loaded.dtype)
    assert model.config._attn_implementation == before
    assert model.model.vision_embed_tokens.img_processor.config._attn_implementation == "sdpa"
    assert 0 < measured.prompt_token_s < measured.token_s  # one token read in a chunk costs less than alone
    assert measured.crop_s > 0


def test_the_runner_on_a_slow_cpu_reads_fewer_crops_and_says_so(monkeypatch, caplog):
    monkeypatch.setattr(pace, "measure", lambda model, dtype: SLOW)
    loaded = load(tiny())
    checkpoint_crops = loaded.processor.image_processor.num_crops
    with caplog.at_level(logging.INFO, logger="inference.serving.startup"):
        runner = start_runner(loaded, tiny())
    assert runner.pace.crop_s == SLOW.crop_s and runner.num_crops == CPU_CROPS
    assert runner.loaded.processor.image_processor.num_crops == CPU_CROPS
    # The runner reads at fewer crops through a processor of its own; the one loaded is left as it was.
    assert loaded.processor.image_processor.num_crops == checkpoint_crops > CPU_CROPS
    assert f"NUM_CROPS={CPU_CROPS} on this CPU" in caplog.text
    assert "Speed on this CPU (measured): one picture at 4 crops" in caplog.text

    told = start_runner(load(tiny(num_crops=16)), tiny(num_crops=16))
    assert told.num_crops == 16


def test_a_gpu_runner_measures_no_pace():
    assert ScriptedRunner.pace is None


@pytest.fixture
async def slow_cpu_engine():
    class SlowCpuRunner(ScriptedRunner):
        pace = SLOW
        num_crops = 4

    engine = LocalEngine(tiny(max_new_tokens=512, batch_window_ms=0), runner_factory=SlowCpuRunner)
    await engine.start()
    yield engine
    await engine.stop()


async def test_the_request_limit_on_a_slow_cpu_fits_its_longest_answer(slow_cpu_engine):
    assert slow_cpu_engine.request_timeout_s == SLOW.request_timeout_s(4, 512)
    explicit = LocalEngine(tiny(request_timeout_s=60.0), runner_factory=ScriptedRunner)
    assert explicit.request_timeout_s == 60.0
    assert LocalEngine(tiny(), runner_factory=ScriptedRunner).request_timeout_s == DEFAULT_REQUEST_TIMEOUT_S


async def test_the_wait_in_line_comes_from_the_pace_then_from_answers_measured(slow_cpu_engine):
    assert LocalEngine(tiny(), runner_factory=ScriptedRunner).wait_s(1) is None  # nothing to go by
    first_guess = SLOW.answer_s(4, TYPICAL_ANSWER_TOKENS)
    assert slow_cpu_engine.wait_s(1) == pytest.approx(first_guess)
    assert slow_cpu_engine.wait_s(3) == pytest.approx(3 * first_guess)
    assert slow_cpu_engine.wait_s(0) is None
    # The scripted runner answers in milliseconds: once an answer has finished, that is the pace.
    await slow_cpu_engine.generate(Request(Task.DESCRIBE, (IMAGE,), max_new_tokens=3))
    assert 0 < slow_cpu_engine.wait_s(1) < first_guess / 100
    assert slow_cpu_engine.wait_s(2) == pytest.approx(2 * slow_cpu_engine.wait_s(1))


def test_pace_from_products_is_positive_and_slower_for_a_token_than_for_a_prompt_token():
    estimate = pace.from_products(torch.float32, int8=False)
    assert 0 < estimate.prompt_token_s < estimate.token_s and estimate.crop_s > 0


def test_the_start_times_a_real_answering_step_and_leaves_nothing_behind(monkeypatch):
    from inference.serving import runner as runner_module
    from inference.serving.startup import CALIBRATION_STEPS

    monkeypatch.setattr(
        pace, "measure", lambda model, dtype: Pace(crop_s=0.01, prompt_token_s=0.0, token_s=0.0)
    )
    steps = []
    real_step = runner_module.ModelRunner.step
    monkeypatch.setattr(
        runner_module.ModelRunner,
        "step",
        lambda self, admit, abort: steps.append(1) or real_step(self, admit, abort),
    )
    runner = start_runner(load(tiny()), tiny())
    assert runner.pace.token_s > 0  # the layers said 0: the real steps took time
    assert len(steps) == 1 + 1 + CALIBRATION_STEPS + 1  # the prompt, a warm-up, timed, the leave
    assert runner.rows == {} and runner.pool.free_blocks == runner.pool.num_blocks  # all given back
