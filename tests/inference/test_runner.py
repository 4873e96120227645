"""The batched runner's pieces: streaming text decoding, and what one step does."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from inference.loading import load
from inference.phi3v import Phi3VProcessor
from inference.runner import IncrementalDecoder, ModelRunner
from inference.types import EngineConfig, Request, Task
from tests.inference.conftest import OFFICIAL, TINY_CHECKPOINT

TEXTS = [
    "Hello world!\nThis is a test: ünïcödé 日本語 😀.\n\n  Indented line\nend",
    "a\n\n\n b\n  c  \n\td\n",
    "```\ncode\n    x = 1\n```",
]


@pytest.mark.parametrize("text", TEXTS)
def test_streamed_pieces_add_up_to_the_full_decode(text):
    tokenizer = Phi3VProcessor.from_pretrained(OFFICIAL).tokenizer
    ids = tokenizer(text, add_special_tokens=False).input_ids
    decoder = IncrementalDecoder(tokenizer)
    pieces = [decoder.push(token) for token in ids] + [decoder.push(None, final=True)]
    assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=True) == text
    assert "\ufffd" not in "".join(pieces)


def test_streamed_pieces_of_random_tokens_add_up_to_the_full_decode():
    # Any ids, byte-fallback pieces of multi-byte characters and long lines included.
    tokenizer = Phi3VProcessor.from_pretrained(OFFICIAL).tokenizer
    special = set(tokenizer.all_special_ids) | set(range(32000, len(tokenizer)))
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        ids = [i for i in torch.randint(0, 32000, (300,), generator=generator).tolist() if i not in special]
        decoder = IncrementalDecoder(tokenizer)
        pieces = [decoder.push(token) for token in ids] + [decoder.push(None, final=True)]
        assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=True)


def test_a_step_either_prefills_newcomers_or_decodes_everyone():
    config = EngineConfig(model_id=str(TINY_CHECKPOINT), device="cpu", max_new_tokens=5)
    runner = ModelRunner(load(config), config)
    image = Image.new("RGB", (90, 60), (10, 200, 10))
    first = runner.prepare(Request(Task.DESCRIBE, (image,)))
    second = runner.prepare(Request(Task.OCR, (image,)))

    events = runner.step([(1, first)], [])
    assert [e.request_id for e in events] == [1]  # the first token, straight after prefill
    assert runner.batch.model_mask() is None  # one row: nothing padded, the model needs no mask
    assert [e.request_id for e in runner.step([], [])] == [1]
    assert [e.request_id for e in runner.step([(2, second)], [])] == [2]  # row 1 waits this step
    assert first.prompt_tokens != second.prompt_tokens
    assert runner.batch.model_mask() is runner.batch.attention_mask  # rows of different lengths: padded
    assert sorted(e.request_id for e in runner.step([], [])) == [1, 2]
    runner.step([], [1])  # abort row 1
    assert runner.running_ids == [2]
    assert runner.batch.model_mask() is None  # its padding columns went with row 1
    while runner.running_ids:
        events = runner.step([], [])
    assert events[-1].finished and events[-1].new_tokens == 5


class OutOfMemoryAt:
    """Makes one call fail the way CUDA does when the GPU is full."""

    def __init__(self, target, name: str):
        self.target, self.name, self.original = target, name, getattr(target, name)

    def __enter__(self):
        def fail(*args, **kwargs):
            raise torch.OutOfMemoryError("CUDA out of memory")

        setattr(self.target, self.name, fail)

    def __exit__(self, *exc):
        setattr(self.target, self.name, self.original)


@pytest.fixture
def runner_with_one_row():
    config = EngineConfig(model_id=str(TINY_CHECKPOINT), device="cpu", max_new_tokens=50)
    runner = ModelRunner(load(config), config)
    image = Image.new("RGB", (90, 60), (10, 200, 10))
    runner.step([(1, runner.prepare(Request(Task.DESCRIBE, (image,))))], [])
    return runner, runner.prepare(Request(Task.OCR, (image,)))


def test_oom_in_a_newcomers_prefill_fails_only_the_newcomer(runner_with_one_row):
    runner, newcomer = runner_with_one_row
    with OutOfMemoryAt(runner.loaded.model, "forward"):
        events = runner.step([(2, newcomer)], [])
    assert [(e.request_id, type(e.error).__name__) for e in events] == [(2, "OutOfMemory")]
    assert runner.running_ids == [1]
    assert [e.request_id for e in runner.step([], [])] == [1]  # the running answer goes on


def test_oom_while_merging_fails_everyone_and_starts_clean(runner_with_one_row):
    runner, newcomer = runner_with_one_row
    import inference.runner as runner_module

    with OutOfMemoryAt(runner_module, "rebuild"):
        events = runner.step([(2, newcomer)], [])
    assert sorted((e.request_id, e.finished, type(e.error).__name__) for e in events) == [
        (1, True, "OutOfMemory"),
        (2, True, "OutOfMemory"),
    ]
    assert runner.running_ids == []


def test_oom_while_decoding_fails_the_batch(runner_with_one_row):
    runner, _ = runner_with_one_row
    with OutOfMemoryAt(runner.loaded.model, "forward"):
        events = runner.step([], [])
    assert [(e.request_id, type(e.error).__name__) for e in events] == [(1, "OutOfMemory")]
    assert runner.running_ids == []


def test_a_conversation_too_long_for_the_budget_leaves_out_its_oldest_follow_ups():
    from inference import phi3v
    from inference.types import Turn

    image = Image.new("RGB", (90, 60), (10, 200, 10))
    history = (Turn(None, "first answer " * 20),) + tuple(
        Turn(f"question {n}?", f"answer {n} " * 40) for n in range(1, 6)
    )
    request = Request(Task.DESCRIBE, (image,), "last question?", history=history, max_new_tokens=16)
    roomy = EngineConfig(model_id=str(TINY_CHECKPOINT), device="cpu", max_new_tokens=16)
    loaded = load(roomy)
    whole = ModelRunner(loaded, roomy).prepare(request)
    assert whole.left_out == 0

    budget = whole.prompt_tokens + 16 - 200  # room for all but about two follow-up exchanges
    tight = EngineConfig(model_id=str(TINY_CHECKPOINT), device="cpu", max_new_tokens=16, token_budget=budget)
    trimmed = ModelRunner(loaded, tight).prepare(request)
    assert trimmed.left_out >= 1
    assert trimmed.prompt_tokens + trimmed.max_new_tokens <= budget
    image_token = phi3v.IMAGE_TOKEN_ID
    text = loaded.processor.tokenizer.decode(trimmed.input_ids[trimmed.input_ids != image_token])
    assert "first answer" in text and "last question?" in text  # the first exchange and the new question stay
    assert "question 1?" not in text and "question 5?" in text  # the oldest follow-ups go first
    # The images are never left out: the same image tokens as the whole conversation.
    assert int((trimmed.input_ids == image_token).sum()) == int((whole.input_ids == image_token).sum()) > 0
