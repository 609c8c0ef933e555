"""Allocation of latent-cache blocks to sequences, with prefix caching.

Every block that a sequence has filled completely gets a hash chained over all tokens before it
(and over the hashes of the request's media, when it has any). A new request whose prompt starts
with the same full blocks reuses them: their latents are already in the cache, so those tokens
are not computed again. Blocks are reference-counted. A block whose count drops to zero goes to
the back of the free queue but keeps its contents and hash until it is handed out again, so the
least recently used cached blocks are evicted first.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

from kimi_k25.engine.sequence import Sequence


@dataclass
class Block:
    block_id: int
    ref_count: int = 0
    block_hash: bytes | None = None


def block_hash(parent: bytes | None, token_ids: list[int], salt: bytes | None) -> bytes:
    """Hash of a full block: its tokens, everything before it (through `parent`), and the media salt."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(parent or b"root")
    digest.update(salt or b"")
    digest.update(b",".join(str(t).encode() for t in token_ids))
    return digest.digest()


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        # Blocks with no user, oldest first; cached ones among them can still be reused.
        self.free_queue: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self.cached: dict[bytes, int] = {}
        self.prefix_queries = 0  # prompt tokens looked up in the prefix cache
        self.prefix_hits = 0  # of those, tokens found

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_queue)

    @property
    def usage(self) -> float:
        """Fraction of blocks in use by running sequences."""
        return 1.0 - len(self.free_queue) / self.num_blocks

    def blocks_needed(self, seq: Sequence, num_tokens: int) -> int:
        """Blocks `seq` must gain to hold `num_tokens` tokens in total."""
        return max(0, -(-num_tokens // self.block_size) - len(seq.block_table))

    def can_allocate(self, seq: Sequence, num_tokens: int) -> bool:
        return self.blocks_needed(seq, num_tokens) <= len(self.free_queue)

    def allocate(self, seq: Sequence, num_tokens: int) -> None:
        """Grow the block table of `seq` to hold `num_tokens` tokens, evicting cached blocks if needed."""
        needed = self.blocks_needed(seq, num_tokens)
        if needed > len(self.free_queue):
            raise RuntimeError(f"need {needed} free cache blocks, {len(self.free_queue)} left")
        for _ in range(needed):
            block_id, _ = self.free_queue.popitem(last=False)
            block = self.blocks[block_id]
            if block.block_hash is not None:
                del self.cached[block.block_hash]
                block.block_hash = None
            block.ref_count = 1
            seq.block_table.append(block_id)

    def match_prefix(self, seq: Sequence) -> int:
        """Attach the cached blocks that start the prompt of a fresh `seq`; return the tokens they cover.

        At least the last prompt token is always left to compute, because its logits give the
        first output token.
        """
        if not self.enable_prefix_caching or seq.block_table:
            return 0
        num_full = (len(seq.prompt_ids) - 1) // self.block_size
        self.prefix_queries += len(seq.prompt_ids)
        parent = None
        for index in range(num_full):
            tokens = seq.prompt_ids[index * self.block_size:(index + 1) * self.block_size]
            digest = block_hash(parent, tokens, seq.cache_salt)
            block_id = self.cached.get(digest)
            if block_id is None:
                break
            block = self.blocks[block_id]
            if block.ref_count == 0:
                del self.free_queue[block_id]
            block.ref_count += 1
            seq.block_table.append(block_id)
            seq.block_hashes.append(digest)
            parent = digest
        matched = len(seq.block_table) * self.block_size
        seq.num_computed_tokens = matched
        seq.num_cached_tokens = matched
        self.prefix_hits += matched
        return matched

    def commit_full_blocks(self, seq: Sequence) -> None:
        """Register the hashes of blocks that `seq` has completely computed, for later requests to reuse."""
        if not self.enable_prefix_caching:
            return
        num_full = seq.num_computed_tokens // self.block_size
        token_ids = seq.token_ids
        while len(seq.block_hashes) < num_full:
            index = len(seq.block_hashes)
            parent = seq.block_hashes[-1] if seq.block_hashes else None
            digest = block_hash(parent, token_ids[index * self.block_size:(index + 1) * self.block_size],
                                seq.cache_salt)
            seq.block_hashes.append(digest)
            block = self.blocks[seq.block_table[index]]
            if block.block_hash is None and digest not in self.cached:
                block.block_hash = digest
                self.cached[digest] = block.block_id

    def free(self, seq: Sequence) -> None:
        """Release the blocks of `seq`; the last blocks of the sequence go to the front of the eviction order."""
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free_queue[block_id] = None
        seq.block_table = []
        seq.block_hashes = []
