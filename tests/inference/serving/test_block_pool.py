"""The KV-cache block pool: blocks are never shared, all-or-nothing, and always come back."""

from __future__ import annotations

import contextlib
import random

import pytest

from inference.serving.block_pool import BlockPool, PoolExhausted


def test_a_request_gets_enough_blocks_and_gives_them_back():
    pool = BlockPool(num_blocks=10, block_tokens=128)
    assert pool.blocks_for(0) == 0 and pool.blocks_for(1) == 1 and pool.blocks_for(128) == 1
    assert pool.blocks_for(129) == 2
    added = pool.reserve(owner=1, tokens=300)
    assert len(added) == 3 and pool.table(1) == added and pool.free_blocks == 7
    assert pool.reserve(owner=1, tokens=384) == []  # already enough
    assert len(pool.reserve(owner=1, tokens=385)) == 1  # grows by one block, the others stay
    assert pool.table(1)[:3] == added
    assert pool.release(1) == 4 and pool.free_blocks == 10 and pool.table(1) == []


def test_too_few_free_blocks_takes_nothing():
    pool = BlockPool(num_blocks=4, block_tokens=16)
    pool.reserve(owner=1, tokens=48)
    with pytest.raises(PoolExhausted):
        pool.reserve(owner=2, tokens=33)
    assert pool.free_blocks == 1 and pool.table(2) == []


def test_joining_and_leaving_never_share_or_lose_a_block():
    rng = random.Random(0)
    pool = BlockPool(num_blocks=64, block_tokens=16)
    owners: set[int] = set()
    for step in range(2_000):
        if owners and rng.random() < 0.4:
            leaving = rng.choice(sorted(owners))
            pool.release(leaving)
            owners.discard(leaving)
        owner = rng.randrange(12)
        with contextlib.suppress(PoolExhausted):  # a full pool takes nothing, as tested above
            pool.reserve(owner, rng.randrange(1, 300))
            owners.add(owner)
        held = [block for owner in range(12) for block in pool.table(owner)]
        assert len(held) == len(set(held)), step  # no block belongs to two requests
        assert len(held) + pool.free_blocks == 64, step  # none lost


def test_a_pool_needs_blocks():
    with pytest.raises(ValueError):
        BlockPool(num_blocks=0)
