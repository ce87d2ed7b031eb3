"""An estimate of what a replica's prefix cache holds: chained hashes of 16-token blocks.

The engines cache a prompt in fixed blocks (vLLM: 16 tokens) keyed by a hash of the block and
everything before it, so a block is only reusable behind the same prefix, and a partial last
block is not cached. ``block_hashes`` computes those keys from the rendered prompt's token ids;
``PrefixIndex`` keeps the keys a replica was last sent, bounded, least recently used out. The
head of a chain is marked more recent than its tail (vLLM frees a sequence's blocks tail first),
so what survives eviction is a prefix and ``matched`` can binary-search for the longest one.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from operator import itemgetter

BLOCK_TOKENS = 16


def block_hashes(token_ids: Sequence[int]) -> list[int]:
    """One key per full block: a hash of the block's ids chained to the previous key."""
    hashes: list[int] = []
    key = 0
    for block in zip(*[iter(token_ids)] * BLOCK_TOKENS, strict=False):  # full blocks only
        key = hash((key, block))
        hashes.append(key)
    return hashes


class PrefixIndex:
    """The blocks one replica is estimated to hold, at most ``capacity`` of them."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.blocks: dict[int, int] = {}  # key → recency (higher: used later)
        self.clock = 0

    def matched(self, hashes: Sequence[int]) -> int:
        """How many leading blocks of ``hashes`` the replica holds."""
        blocks = self.blocks
        low, high = 0, len(hashes)
        while low < high:  # largest n with hashes[n - 1] held
            middle = (low + high + 1) // 2
            if hashes[middle - 1] in blocks:
                low = middle
            else:
                high = middle - 1
        return low

    def add(self, hashes: Sequence[int]) -> None:
        """The replica was sent these blocks: they are the most recently used, head last."""
        count = len(hashes)
        self.blocks.update(zip(hashes, range(self.clock + count, self.clock, -1), strict=True))
        self.clock += count
        if len(self.blocks) > self.capacity * 5 // 4:  # evict in batches: amortised O(1)
            self.blocks = dict(heapq.nlargest(self.capacity, self.blocks.items(),
                                              key=itemgetter(1)))

    def clear(self) -> None:
        """The replica restarted: its cache is empty."""
        self.blocks.clear()
