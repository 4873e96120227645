"""The paged KV cache (issue 9, step 2): the same greedy tokens as the path the runner uses today,
with requests joining and leaving mid-answer, and nobody else's cache moved when they do."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from inference.block_pool import BlockPool
from inference.kv_cache import GrowingCache
from inference.loading import load
from inference.paged_cache import PagedCache, PagedStorage, RowView, attention_mask, positions
from inference.prompts import build_prompt
from inference.types import EngineConfig, Task
from tests.inference.conftest import TINY_CHECKPOINT

BLOCK = 32  # small blocks, so every prompt spans many (a tiny-checkpoint prompt is ~2,000 tokens)


@pytest.fixture(scope="module")
def loaded():
    return load(EngineConfig(model_id=str(TINY_CHECKPOINT), device="cpu", attn_implementation="sdpa"))


def prompt(loaded, task: Task, size: tuple[int, int], question: str | None = None):
    image = Image.new("RGB", size, (size[0] % 255, 90, size[1] % 255))
    return loaded.processor(text=build_prompt(task, 1, question), images=[image], return_tensors="pt")


@torch.inference_mode()
def alone(loaded, inputs, steps: int) -> list[int]:
    """Today's path for one request: prefill, then decode through the growing cache."""
    model, cache = loaded.model, GrowingCache()
    logits = model(**inputs, cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
    tokens = [int(logits.argmax(-1))]
    for _ in range(steps - 1):
        logits = model(input_ids=torch.tensor([[tokens[-1]]]), cache=cache, use_cache=True).logits[:, -1]
        tokens.append(int(logits.argmax(-1)))
    return tokens


class Paged:
    """Just enough of a runner to drive the paged cache: prefill one request, decode everyone."""

    def __init__(self, loaded, blocks: int = 512) -> None:
        config = (
            loaded.model.config.text_config
            if hasattr(loaded.model.config, "text_config")
            else loaded.model.config
        )
        self.model = loaded.model
        self.pool = BlockPool(blocks, BLOCK)
        self.storage = PagedStorage(
            num_layers=config.num_hidden_layers,
            num_blocks=blocks,
            block_tokens=BLOCK,
            kv_heads=config.num_key_value_heads,
            head_dim=config.hidden_size // config.num_attention_heads,
            dtype=torch.float32,
            device="cpu",
        )
        self.length: dict[int, int] = {}
        self.tokens: dict[int, list[int]] = {}

    def view(self, rid: int) -> RowView:
        return RowView(tuple(self.pool.table(rid)), self.length[rid])

    @torch.inference_mode()
    def prefill(self, rid: int, inputs, answer_tokens: int) -> None:
        size = inputs["input_ids"].shape[1]
        self.pool.reserve(rid, size + answer_tokens)
        self.length[rid] = 0
        rows = [self.view(rid)]
        logits = self.model(
            input_ids=inputs["input_ids"],
            pixel_values=inputs["pixel_values"],
            image_sizes=inputs["image_sizes"],
            attention_mask=attention_mask(rows, size, "cpu"),
            position_ids=positions(rows, size, "cpu"),
            cache=PagedCache(self.storage, rows),
            use_cache=True,
            logits_to_keep=1,
        ).logits[:, -1]
        self.length[rid] = size
        self.tokens[rid] = [int(logits.argmax(-1))]

    @torch.inference_mode()
    def decode(self) -> None:
        rids = list(self.tokens)
        rows = [self.view(rid) for rid in rids]
        logits = self.model(
            input_ids=torch.tensor([[self.tokens[rid][-1]] for rid in rids]),
            attention_mask=attention_mask(rows, 1, "cpu"),
            position_ids=positions(rows, 1, "cpu"),
            cache=PagedCache(self.storage, rows),
            use_cache=True,
        ).logits[:, -1]
        for rid, token in zip(rids, logits.argmax(-1).tolist()):
            self.length[rid] += 1
            self.tokens[rid].append(token)

    def leave(self, rid: int) -> list[int]:
        self.pool.release(rid)
        del self.length[rid]
        return self.tokens.pop(rid)


def test_one_request_gives_the_same_tokens_as_today(loaded):
    inputs = prompt(loaded, Task.DESCRIBE, (300, 200))
    paged = Paged(loaded)
    paged.prefill(1, inputs, answer_tokens=12)
    for _ in range(11):
        paged.decode()
    assert paged.tokens[1] == alone(loaded, inputs, 12)


def test_requests_joining_and_leaving_mid_answer_match_each_alone_and_move_nothing(loaded):
    first = prompt(loaded, Task.DESCRIBE, (300, 200))
    second = prompt(loaded, Task.OCR, (120, 500))  # a different length
    third = prompt(loaded, Task.DESCRIBE, (90, 90), question="What colour is it?")
    paged = Paged(loaded)
    paged.prefill(1, first, answer_tokens=14)
    for _ in range(3):
        paged.decode()
    blocks_of_first = paged.pool.table(1)
    cached_first = [
        layer[paged.storage.slots(blocks_of_first, 0, paged.length[1], "cpu")].clone()
        for layer in paged.storage.keys
    ]
    addresses = [layer.data_ptr() for layer in paged.storage.keys]

    paged.prefill(2, second, answer_tokens=10)  # joins while the first is answering
    for _ in range(5):
        paged.decode()
    # The newcomer was written around the first request: its blocks and their contents are untouched.
    assert paged.pool.table(1) == blocks_of_first
    assert [layer.data_ptr() for layer in paged.storage.keys] == addresses
    for layer, before in zip(paged.storage.keys, cached_first):
        slots = paged.storage.slots(blocks_of_first, 0, len(before), "cpu")
        assert torch.equal(layer[slots], before)

    tokens_first = paged.leave(1)  # leaves mid-stream; the second goes on alone
    paged.prefill(3, third, answer_tokens=8)  # and a third takes the freed blocks
    for _ in range(4):
        paged.decode()

    assert tokens_first == alone(loaded, first, len(tokens_first))
    assert paged.tokens[2] == alone(loaded, second, len(paged.tokens[2]))
    assert paged.tokens[3] == alone(loaded, third, len(paged.tokens[3]))


def test_the_mask_sees_each_rows_own_tokens_causally_and_never_padding():
    rows = [RowView((0,), 2), RowView((1,), 0)]
    mask = attention_mask(rows, 2, "cpu")[:, 0]
    assert mask.shape == (2, 2, 4)
    assert mask[0].tolist() == [[True, True, True, False], [True, True, True, True]]
    assert mask[1].tolist() == [[True, False, False, False], [True, True, False, False]]
    assert positions(rows, 2, "cpu").tolist() == [[2, 3], [0, 1]]
