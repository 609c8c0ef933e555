"""Allocation of latent-cache blocks to sequences."""

from __future__ import annotations

from collections import deque

from kimi_k25.engine.sequence import Sequence


class BlockManager:
    """A free list of `num_blocks` blocks of `block_size` token slots each."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.free_blocks: deque[int] = deque(range(num_blocks))

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_blocks)

    def blocks_needed(self, seq: Sequence, num_tokens: int) -> int:
        """Blocks `seq` must gain to hold `num_tokens` tokens in total."""
        return max(0, -(-num_tokens // self.block_size) - len(seq.block_table))

    def can_allocate(self, seq: Sequence, num_tokens: int) -> bool:
        return self.blocks_needed(seq, num_tokens) <= len(self.free_blocks)

    def allocate(self, seq: Sequence, num_tokens: int) -> None:
        """Grow the block table of `seq` to hold `num_tokens` tokens."""
        needed = self.blocks_needed(seq, num_tokens)
        if needed > len(self.free_blocks):
            raise RuntimeError(f"need {needed} free cache blocks, {len(self.free_blocks)} left")
        seq.block_table.extend(self.free_blocks.popleft() for _ in range(needed))

    def free(self, seq: Sequence) -> None:
        self.free_blocks.extend(seq.block_table)
        seq.block_table = []
