"""Names of a prompt's full blocks: equal names only for equal prompts, pictures and rotary regime."""

from __future__ import annotations

from inference.prepare import picture_spans
from inference.serving.prefix_hash import prefix_hashes

IMG = 9
A, B = b"a" * 16, b"b" * 16


def names(ids, pictures=(A,), long_rope=False, block=4):
    return prefix_hashes(ids, picture_spans(ids, IMG), pictures, block, long_rope=long_rope)


def test_each_run_of_the_placeholder_is_one_picture():
    assert picture_spans([1, IMG, IMG, 2, IMG, 3], IMG) == [(1, 3), (4, 5)]
    assert picture_spans([IMG, IMG], IMG) == [(0, 2)]
    assert picture_spans([1, 2], IMG) == []


def test_one_name_per_full_block_chained_to_those_before_it():
    ids = [1, IMG, IMG, IMG, IMG, 5, 6, 7, 8, 9 + 1]
    first = names(ids)
    assert len(first) == 2  # 10 tokens: two full blocks of 4
    assert names(ids[:8]) == first  # a prompt that stops earlier names the same blocks
    assert names([*ids[:4], 0, 5, 6, 7])[0] == first[0] and names([*ids[:4], 0, 5, 6, 7])[1] != first[1]
    other_start = names([2, IMG, IMG, IMG, IMG, 5, 6, 7])
    assert other_start[0] != first[0] and other_start[1] != first[1]  # the chain carries the difference


def test_another_picture_or_rotary_regime_gives_other_names():
    ids = [1, IMG, IMG, IMG, IMG, 5, 6, 7]
    assert names(ids, (B,)) != names(ids, (A,))
    assert names(ids, long_rope=True) != names(ids)
    # The picture's tokens reach into the second block too: it differs, though its own tokens are equal.
    assert names(ids, (B,))[1] != names(ids, (A,))[1]


def test_pictures_that_cannot_be_told_apart_get_no_names():
    assert names([1, IMG, IMG, 2], pictures=()) == []
