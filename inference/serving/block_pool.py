"""Fixed-size blocks of the KV cache, handed to requests and taken back, and the blocks kept for reuse
(docs/kv-cache.md).

Pure bookkeeping, no torch: the cache tensors live elsewhere and are indexed by these block ids. A request
holds enough blocks for the tokens it reserved. Joining takes blocks, leaving returns them: nothing of any
other request moves.

A block whose tokens are all a prompt's, once written, can be kept under its *prefix hash* (the hash of its
tokens chained to every block before it: :mod:`inference.serving.prefix_hash`). A later request whose
prompt starts with the same blocks takes them as they are, read-only, and computes only the rest; a block
stays kept while anyone holds it (reference counts) and, once nobody does, until its space is needed: free
blocks never kept are handed out first, then kept ones, least recently used first.

Used by :class:`~inference.serving.runner.ModelRunner`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

# On a CUDA GPU: FlashAttention reads block tables only in blocks of a multiple of 256 tokens.
BLOCK_TOKENS = 256
# Elsewhere nothing asks for large blocks, and small ones reuse more: a prompt that starts like a kept one
# computes at most 15 of the tokens they share (a follow-up about a picture: its new words and little else).
SMALL_BLOCK_TOKENS = 16


def block_tokens_for(device_type: str) -> int:
    """The block size of the KV cache on a device of this type (``cuda``, ``cpu``, ``mps``)."""
    return BLOCK_TOKENS if device_type == "cuda" else SMALL_BLOCK_TOKENS


class PoolExhausted(Exception):
    """Not enough free blocks; nothing was taken."""


class BlockPool:
    def __init__(self, num_blocks: int, block_tokens: int = BLOCK_TOKENS) -> None:
        if num_blocks < 1 or block_tokens < 1:
            raise ValueError("num_blocks and block_tokens must be positive")
        self.num_blocks = num_blocks
        self.block_tokens = block_tokens
        # Most recently freed first: a block just used is likelier to be in the GPU's L2 cache.
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))
        self._tables: dict[int, list[int]] = {}
        self._holders: dict[int, int] = {}  # block -> how many requests hold it
        self._kept: dict[bytes, int] = {}  # prefix hash -> the block that holds those tokens
        self._hash_of: dict[int, bytes] = {}  # kept block -> its prefix hash
        self._idle: OrderedDict[int, None] = OrderedDict()  # kept blocks nobody holds, least recent first
        self.hits = 0  # blocks reused instead of computed, since start

    @property
    def free_blocks(self) -> int:
        """Blocks a request may take: never kept, or kept but held by nobody."""
        return len(self._free) + len(self._idle)

    @property
    def kept_blocks(self) -> int:
        return len(self._kept)

    def blocks_for(self, tokens: int) -> int:
        """Blocks needed to hold ``tokens`` tokens."""
        return -(-max(tokens, 0) // self.block_tokens)

    def table(self, owner: int) -> list[int]:
        """The blocks ``owner`` holds, in token order (a copy)."""
        return list(self._tables.get(owner, []))

    def cached_blocks(self, prefix_hashes: Sequence[bytes]) -> int:
        """How many of ``prefix_hashes``, from the first, are kept now."""
        count = 0
        for prefix_hash in prefix_hashes:
            if prefix_hash not in self._kept:
                break
            count += 1
        return count

    def reserve(self, owner: int, tokens: int) -> list[int]:
        """Make ``owner`` hold blocks for at least ``tokens`` tokens; returns the blocks added.

        All or nothing: raises :class:`PoolExhausted` and takes nothing when too few are free.
        """
        return self._reserve(owner, tokens, ())[1]

    def reserve_reusing(self, owner: int, tokens: int, prefix_hashes: Sequence[bytes]) -> int:
        """:meth:`reserve` for a new ``owner`` whose first blocks would hold the tokens ``prefix_hashes``
        name: those that are kept, from the first, are taken as they are (read-only, shared). Returns how
        many."""
        return self._reserve(owner, tokens, prefix_hashes)[0]

    def _reserve(self, owner: int, tokens: int, prefix_hashes: Sequence[bytes]) -> tuple[int, list[int]]:
        held = self._tables.get(owner, [])
        reused = [] if held else [self._kept[h] for h in prefix_hashes[: self.cached_blocks(prefix_hashes)]]
        reused = reused[: self.blocks_for(tokens)]
        needed = max(self.blocks_for(tokens) - len(held) - len(reused), 0)
        free = self.free_blocks - sum(block in self._idle for block in reused)
        if needed > free:
            raise PoolExhausted(f"{needed} blocks needed, {free} free")
        for block in reused:
            self._hold(block)
        added = [self._take() for _ in range(needed)]
        if reused or added:
            self._tables[owner] = held + reused + added
        self.hits += len(reused)
        return len(reused), added

    def keep(self, owner: int, index: int, prefix_hash: bytes) -> None:
        """``owner``'s block ``index`` now holds the tokens ``prefix_hash`` names: keep it for reuse (unless
        another block already holds them)."""
        block = self._tables[owner][index]
        if prefix_hash in self._kept or block in self._hash_of:
            return
        self._kept[prefix_hash] = block
        self._hash_of[block] = prefix_hash

    def release(self, owner: int) -> int:
        """Give back every block ``owner`` holds; returns how many. Kept blocks stay kept until needed."""
        blocks = self._tables.pop(owner, [])
        for block in reversed(blocks):
            self._holders[block] -= 1
            if self._holders[block] > 0:
                continue
            del self._holders[block]
            if block in self._hash_of:
                self._idle[block] = None  # the most recently used, evicted last
            else:
                self._free.append(block)
        return len(blocks)

    def _hold(self, block: int) -> None:
        self._idle.pop(block, None)
        self._holders[block] = self._holders.get(block, 0) + 1

    def _take(self) -> int:
        """A block for new tokens: one never kept, else the least recently used kept one (forgotten)."""
        if self._free:
            block = self._free.pop()
        else:
            block, _ = self._idle.popitem(last=False)
            del self._kept[self._hash_of.pop(block)]
        self._holders[block] = 1
        return block
