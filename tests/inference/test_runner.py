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
