"""Fixed-size blocks of the KV cache, handed to requests and taken back (docs/kv-cache.md).

Pure bookkeeping, no torch: the cache tensors live elsewhere and are indexed by these block ids. A
block belongs to at most one request at a time; a request holds enough blocks for the tokens it
reserved. Joining takes free ids, leaving returns them: nothing of any other request moves.

Used by :class:`~inference.serving.runner.ModelRunner`.
"""

from __future__ import annotations

BLOCK_TOKENS = 256  # FlashAttention reads block tables only in blocks of a multiple of 256 tokens


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

    @property
    def free_blocks(self) -> int:
        return len(self._free)

    def blocks_for(self, tokens: int) -> int:
        """Blocks needed to hold ``tokens`` tokens."""
        return -(-max(tokens, 0) // self.block_tokens)

    def table(self, owner: int) -> list[int]:
        """The blocks ``owner`` holds, in token order (a copy)."""
        return list(self._tables.get(owner, []))

    def reserve(self, owner: int, tokens: int) -> list[int]:
        """Make ``owner`` hold blocks for at least ``tokens`` tokens; returns the blocks added.

        All or nothing: raises :class:`PoolExhausted` and takes nothing when too few are free.
        """
        held = self._tables.get(owner, [])
        needed = self.blocks_for(tokens) - len(held)
        if needed <= 0:
            return []
        if needed > len(self._free):
            raise PoolExhausted(f"{needed} blocks needed, {len(self._free)} free")
        added = [self._free.pop() for _ in range(needed)]
        self._tables[owner] = held + added
        return added

    def release(self, owner: int) -> int:
        """Give back every block ``owner`` holds; returns how many."""
        blocks = self._tables.pop(owner, [])
        self._free.extend(reversed(blocks))
        return len(blocks)
