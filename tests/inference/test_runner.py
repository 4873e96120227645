"""The batched runner's pieces: streaming text decoding, and what one step does."""

from __future__ import annotations

import pytest
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


def test_a_step_either_prefills_newcomers_or_decodes_everyone():
    config = EngineConfig(model_id=str(TINY_CHECKPOINT), device="cpu", max_new_tokens=5)
    runner = ModelRunner(load(config), config)
    image = Image.new("RGB", (90, 60), (10, 200, 10))
    first = runner.prepare(Request(Task.DESCRIBE, (image,)))
    second = runner.prepare(Request(Task.OCR, (image,)))

    events = runner.step([(1, first)], [])
    assert [e.request_id for e in events] == [1]  # the first token, straight after prefill
    assert [e.request_id for e in runner.step([], [])] == [1]
    assert [e.request_id for e in runner.step([(2, second)], [])] == [2]  # row 1 waits this step
    assert sorted(e.request_id for e in runner.step([], [])) == [1, 2]
    runner.step([], [1])  # abort row 1
    assert runner.running_ids == [2]
    while runner.running_ids:
        events = runner.step([], [])
    assert events[-1].finished and events[-1].new_tokens == 5
