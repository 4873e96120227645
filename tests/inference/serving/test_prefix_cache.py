"""A picture read once: a prompt whose leading blocks are kept reuses them, and answers exactly as if it had
computed everything (transformers' generate on the same weights, or a runner starting from nothing)."""

from __future__ import annotations

import pytest

from inference.loading import load
from inference.serving.startup import start_runner
from inference.types import Request, Task, Turn
from tests.inference.serving.test_runner import Generated, Recorder, alone, image, paged, same_answers, tiny

PICTURE = image(90, 60, 1)


@pytest.fixture(scope="module")
def reference() -> Generated:
    return Generated()


@pytest.fixture(params=[16, 256], ids=["CPU blocks", "GPU blocks"])
def block_tokens(request, monkeypatch):
    """The KV cache's block size: the CPU's, and a GPU's (FlashAttention's 256) on the CPU."""
    for module in ("inference.serving.runner", "inference.serving.startup"):
        monkeypatch.setattr(f"{module}.block_tokens_for", lambda device_type: request.param)
    return request.param


@pytest.fixture(scope="module")
def describe():
    return Request(Task.DESCRIBE, (PICTURE,), question="What is this?")


def test_the_same_picture_asked_again_is_read_once_and_answered_the_same(describe, reference, block_tokens):
    runner = paged()
    assert runner.block_tokens == block_tokens
    same_answers(alone(runner, describe), 1, reference.answer(describe), 1)
    assert runner.pool.hits == 0 and runner.pictures.pictures_read == 1
    prompt = runner.prepare(describe).prompt_tokens
    same_answers(alone(runner, describe), 1, reference.answer(describe), 1)
    assert runner.pool.hits == (prompt - 1) // runner.block_tokens > 0  # every full block but the last
    assert runner.pictures.pictures_read == 1  # the vision tower did not run again


def test_a_second_task_on_the_same_picture_reuses_what_the_first_computed(describe, reference, block_tokens):
    ocr = Request(Task.OCR, (PICTURE,))
    runner = paged()
    alone(runner, describe)
    same_answers(alone(runner, ocr), 1, reference.answer(ocr), 1)
    assert runner.pool.hits > 0 and runner.pictures.pictures_read == 1


def test_a_follow_up_reuses_its_pictures_blocks(describe, reference, block_tokens):
    follow_up = Request(
        Task.DESCRIBE, (PICTURE,), question="And its colours?", history=(Turn("What is this?", "A test."),)
    )
    runner = paged()
    alone(runner, describe)
    same_answers(alone(runner, follow_up), 1, reference.answer(follow_up), 1)
    assert runner.pool.hits > 0 and runner.pictures.pictures_read == 1


@pytest.mark.parametrize("chunk", [4096, 97])
def test_two_people_on_one_picture_share_its_blocks_while_both_answer(describe, reference, chunk):
    recorder = Recorder(paged(prefill_chunk_tokens=chunk))
    runner = recorder.runner
    recorder.step([(1, runner.prepare(describe))])
    while runner.rows[1].prefilling:
        recorder.step()
    recorder.step([(2, runner.prepare(describe))])  # the first is answering: its prompt's blocks are kept
    assert runner.rows[2].table[: runner.pool.hits] == runner.rows[1].table[: runner.pool.hits]
    assert runner.pool.hits > 0
    recorder.finish()
    for request_id in (1, 2):
        same_answers(recorder, request_id, reference.answer(describe), 1)


def test_kept_blocks_give_way_under_pressure_and_a_later_ask_computes_them_again(describe, reference):
    other = Request(Task.OCR, (image(300, 500, 2),))
    runner = paged(token_budget=2560)  # the larger of the two, nothing to spare
    alone(runner, describe)
    kept = runner.pool.kept_blocks
    assert kept > 0
    alone(runner, other)  # needs the space: the first picture's blocks go
    hits = runner.pool.hits
    same_answers(alone(runner, describe), 1, reference.answer(describe), 1)
    assert runner.pool.hits - hits < kept  # not all of it was there any more


def test_with_a_sliding_window_a_reused_prefix_answers_as_a_runner_starting_from_nothing(describe):
    def windowed():
        config = tiny()
        loaded = load(config)
        loaded.model.config.sliding_window = 700  # shorter than the prompt: the window matters
        runner = start_runner(loaded, config)
        runner.stop_ids = set()
        return runner

    fresh = alone(windowed(), describe)
    runner = windowed()
    alone(runner, describe)
    same_answers(alone(runner, describe), 1, fresh, 1)
    assert runner.pool.hits > 0


def test_a_prompt_past_the_rotary_switch_reuses_blocks_computed_with_the_long_factors(reference):
    long = Request(Task.COMPARE, (image(200, 120, 3), image(64, 64, 4)))  # 4,944 tokens: past 4,096
    runner = paged()
    alone(runner, long)
    same_answers(alone(runner, long), 1, reference.answer(long), 1)
    assert runner.pool.hits > 0


def test_another_picture_of_the_same_size_reuses_nothing_of_the_first(describe, reference, block_tokens):
    """Its prompt has the very same tokens (a picture is one placeholder id repeated): only pixels differ."""
    lookalike = Request(Task.DESCRIBE, (image(90, 60, 99),), question="What is this?")
    runner = paged()
    alone(runner, describe)
    assert runner.prepare(lookalike).input_ids.tolist() == runner.prepare(describe).input_ids.tolist()
    same_answers(alone(runner, lookalike), 1, reference.answer(lookalike), 1)
    assert runner.pool.hits == 0 and runner.pictures.pictures_read == 2
