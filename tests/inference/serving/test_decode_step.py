"""The runner's static decoding step: padded to a bucket it answers exactly as unpadded,
its padding touches only the scratch block, and a capture that cannot happen leaves eager steps.

CUDA graphs themselves need a GPU (tests/inference/test_gpu.py); on the CPU the same step runs eagerly.
"""

from __future__ import annotations

import pytest
import torch

from inference.kernels.attention_backends import BACKENDS
from inference.serving.decode_step import DecodeInputs, DecodeRow, buckets_up_to
from tests.inference.serving.test_runner import Recorder, alone, paged, reference, same_answers

__all__ = ["reference"]  # the fixture: transformers' generate on the same weights


def test_buckets_cover_every_batch_size_up_to_the_maximum():
    assert buckets_up_to(1) == (1,)
    assert buckets_up_to(8) == (1, 2, 4, 8)
    assert buckets_up_to(20) == (1, 2, 4, 8, 16, 20)
    assert buckets_up_to(32) == (1, 2, 4, 8, 16, 24, 32)
    assert buckets_up_to(100) == (1, 2, 4, 8, 16, 24, 32, 64, 96, 100)


def test_steps_padded_to_a_bucket_answer_as_unpadded(requests, reference):
    """Three rows run as a bucket of four (and two as two, one as one) as a captured graph would."""
    padded = Recorder(paged(prefill_chunk_tokens=4096, max_batch_size=8))
    runner = padded.runner
    runner.decode_step.buckets = (1, 4, 8)
    scratch = runner.decode_inputs.scratch_block
    owned_before = [layer[:scratch].clone() for layer in runner.storage.keys]
    padded.step([(i + 1, runner.prepare(request)) for i, request in enumerate(requests[:2])])
    padded.step([(3, runner.prepare(requests[0]))])
    held = {block for row in runner.rows.values() for block in row.table}
    sizes = []
    runner.loaded.model.register_forward_pre_hook(
        lambda _m, _a, kwargs: sizes.append(kwargs["input_ids"].shape[1]) if "input_ids" in kwargs else None,
        with_kwargs=True,
    )
    padded.step()
    padded.step(abort=[2])
    padded.finish()
    assert sizes[:2] == [4, 4]  # three rows ran as a bucket of four, then two rows as four
    for rid, request in ((1, requests[0]), (2, requests[1]), (3, requests[0])):
        expected = reference.answer(request)
        if rid == 2:  # aborted after a few tokens: what it got is the start of its answer alone
            assert padded.tokens[2] == expected.tokens[1][: len(padded.tokens[2])]
        else:
            same_answers(padded, rid, expected, 1)
    # Padding rows wrote into the scratch block only: the blocks nobody held are as they were.
    for before, layer in zip(owned_before, runner.storage.keys):
        for block in set(range(scratch)) - held:
            assert torch.equal(before[block], layer[block])
    assert not torch.equal(runner.storage.keys[0][scratch], torch.zeros_like(runner.storage.keys[0][scratch]))


def test_the_block_table_is_rewritten_when_a_row_holds_other_blocks():
    """Also for the same request id (a runner reset and used again): the tables decide, not the ids."""
    inputs = DecodeInputs(max_rows=4, blocks_per_row=3, scratch_block=9, block_tokens=16, device="cpu")
    inputs.fill([DecodeRow(owner=1, token=5, position=20, slot=3 * 16 + 4, table=(2, 3))], bucket=2)
    assert inputs.block_table[:2].tolist() == [[2, 3, 9], [9, 9, 9]]  # the padding row: scratch only
    inputs.fill([DecodeRow(owner=1, token=5, position=20, slot=8 * 16 + 4, table=(7, 8))], bucket=2)
    assert inputs.block_table[:2].tolist() == [[7, 8, 9], [9, 9, 9]]
    assert inputs.slots[:2].tolist() == [8 * 16 + 4, 9 * 16]
    assert inputs.lengths[:2].tolist() == [21, 1] and inputs.cu_seq_k[:3].tolist() == [0, 21, 22]


def test_a_capture_that_cannot_happen_leaves_eager_steps(requests, reference):
    runner = paged()
    step = runner.decode_step
    assert step.capture(8) == "the plain attention kernel sizes its work on the host"
    step.backend = BACKENDS["triton"]  # as if it ran here: the capture itself fails on a machine without CUDA
    problem = step.capture(8)
    assert problem and not step.graphs and step.buckets == ()
    step.backend = BACKENDS["plain"]
    assert not step.can_capture()  # no CUDA here: the runner never tries
    same_answers(alone(runner, requests[0]), 1, reference.answer(requests[0]), 1)


@pytest.fixture(scope="module")
def requests():
    from inference.types import Request, Task
    from tests.inference.serving.test_runner import image

    return [
        Request(Task.DESCRIBE, (image(90, 60, 1),), question="What is this?"),
        Request(Task.OCR, (image(300, 500, 2),)),
    ]
