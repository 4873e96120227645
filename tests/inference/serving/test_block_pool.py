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


# -- Blocks kept for reuse ------------------------------------------------------------------------------

NAMES = [bytes([n]) * 16 for n in range(8)]


def pool_with_kept(num_blocks: int) -> BlockPool:
    """Owner 1 wrote three full blocks named NAMES[0..2], kept them, and left."""
    pool = BlockPool(num_blocks=num_blocks, block_tokens=16)
    pool.reserve(owner=1, tokens=60)
    for index in range(3):
        pool.keep(1, index, NAMES[index])
    pool.release(1)
    return pool


def test_a_kept_block_is_reused_by_a_prompt_that_starts_the_same_way():
    pool = pool_with_kept(num_blocks=10)
    assert pool.kept_blocks == 3 and pool.free_blocks == 10  # kept, yet free to take
    assert pool.reserve_reusing(owner=2, tokens=70, prefix_hashes=NAMES[:3]) == 3
    assert pool.reserve_reusing(owner=3, tokens=70, prefix_hashes=[NAMES[0], NAMES[5], NAMES[2]]) == 1
    two, three = pool.table(2), pool.table(3)
    assert len(two) == len(three) == 5 and set(two) & set(three) == {two[0]} == {three[0]}
    assert pool.hits == 4 and pool.free_blocks == 1


def test_a_shared_block_stays_held_until_its_last_holder_leaves_and_is_never_handed_out_meanwhile():
    pool = pool_with_kept(num_blocks=4)
    assert pool.reserve_reusing(owner=2, tokens=40, prefix_hashes=NAMES[:2]) == 2
    assert pool.reserve_reusing(owner=3, tokens=20, prefix_hashes=NAMES[:1]) == 1
    shared = pool.table(2)[0]
    pool.release(2)
    pool.reserve(owner=4, tokens=16 * pool.free_blocks)  # everything free, kept or not
    assert shared not in pool.table(4) and shared in pool.table(3)
    with pytest.raises(PoolExhausted):
        pool.reserve(owner=5, tokens=1)


def test_free_blocks_never_kept_go_first_then_kept_ones_from_a_prompts_end():
    pool = pool_with_kept(num_blocks=5)  # kept: the blocks named 0, 1, 2; never kept: two
    pool.reserve(owner=2, tokens=32)  # the two never kept
    assert pool.cached_blocks(NAMES[:3]) == 3
    pool.reserve(owner=3, tokens=16)  # one kept block must go: the prompt's last, which needs the others
    assert pool.cached_blocks(NAMES[:3]) == 2
    pool.reserve(owner=4, tokens=16)
    assert pool.cached_blocks(NAMES[:3]) == 1
    assert pool.reserve_reusing(owner=5, tokens=16, prefix_hashes=NAMES[:3]) == 1 and pool.free_blocks == 0


def test_kept_blocks_used_lately_are_forgotten_last():
    pool = BlockPool(num_blocks=3, block_tokens=16)
    for owner, name in ((1, NAMES[0]), (2, NAMES[1])):
        pool.reserve(owner=owner, tokens=16)
        pool.keep(owner, 0, name)
    pool.release(1)
    pool.release(2)  # kept, least recent first: 0, 1
    pool.reserve_reusing(owner=3, tokens=16, prefix_hashes=NAMES[:1])  # 0 read again
    pool.release(3)  # now: 1, 0
    pool.reserve(owner=4, tokens=32)  # the never-kept block, then the least recently used kept one
    assert pool.cached_blocks(NAMES[:1]) == 1 and pool.cached_blocks(NAMES[1:2]) == 0


def test_reusing_is_all_or_nothing_too():
    pool = pool_with_kept(num_blocks=4)
    with pytest.raises(PoolExhausted):
        pool.reserve_reusing(owner=2, tokens=16 * 6, prefix_hashes=NAMES[:3])
    assert pool.table(2) == [] and pool.free_blocks == 4 and pool.hits == 0
    assert pool.reserve_reusing(owner=2, tokens=16 * 4, prefix_hashes=NAMES[:3]) == 3
    assert pool.free_blocks == 0


def test_a_second_block_with_the_same_tokens_is_not_kept_twice():
    pool = BlockPool(num_blocks=4, block_tokens=16)
    pool.reserve(owner=1, tokens=16)
    pool.reserve(owner=2, tokens=16)  # both computed the same block at the same time
    pool.keep(1, 0, NAMES[0])
    pool.keep(2, 0, NAMES[0])
    pool.release(1)
    pool.release(2)
    assert pool.kept_blocks == 1 and pool.free_blocks == 4
