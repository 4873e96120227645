"""Names for a prompt's full KV-cache blocks, so that a later prompt starting the same way reuses them.

Each full block of a prompt gets a *prefix hash*: the hash of the block's tokens, chained to the hash of the
block before it, so equal hashes mean equal prompts up to the end of that block. A picture's tokens are all
the same placeholder id, so each picture is named by the hash of the pixels the model reads
(:func:`inference.prepare.picture_hash`, the crops included), mixed into every block its tokens touch. The
chain starts from the rotary regime the keys were computed in (LongRoPE's short or long factors give other
keys for the same tokens). In Phi-3-vision's prompt the pictures come first, so a picture asked about again
(by anyone, with any task, or in a follow-up) gives the same leading blocks.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Sequence

DIGEST_BYTES = 16


def prefix_hashes(
    input_ids: Sequence[int],
    spans: Sequence[tuple[int, int]],
    pictures: Sequence[bytes],
    block_tokens: int,
    *,
    long_rope: bool,
) -> list[bytes]:
    """One prefix hash per full block of ``input_ids``; none when the pictures cannot be told apart (a span
    without its picture's hash)."""
    if len(spans) != len(pictures):
        return []
    hashes: list[bytes] = []
    parent = b"long rope" if long_rope else b"short rope"
    for start in range(0, len(input_ids) - block_tokens + 1, block_tokens):
        end = start + block_tokens
        digest = hashlib.blake2b(parent, digest_size=DIGEST_BYTES)
        digest.update(array("q", input_ids[start:end]).tobytes())
        for (first, last), picture in zip(spans, pictures):
            if first < end and last > start:  # the picture's tokens reach into this block
                digest.update(array("q", [first]).tobytes() + picture)
        parent = digest.digest()
        hashes.append(parent)
    return hashes
