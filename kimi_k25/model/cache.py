"""The compressed MLA cache and the per-step layout of a packed batch.

MLA needs only two things per token and layer to rebuild every head's key and value: the
normalised `kv_lora_rank` latent and the rotated `qk_rope_head_dim` key shared by all heads
(512 + 64 = 576 values for Kimi K2.5, against 64 heads × (192 + 128) for plain attention).
The cache stores exactly that, in fixed-size blocks addressed through per-sequence block
tables, the layout vLLM calls paged attention.

Legend: T = tokens in the step (all sequences packed), C = kv_cache_dim, L = layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


class LatentCache:
    """Paged storage of shape (L, num_blocks * block_size, C); a slot is block * block_size + offset."""

    def __init__(self, num_layers: int, num_blocks: int, block_size: int, kv_cache_dim: int,
                 dtype: torch.dtype, device: torch.device | str = "cpu") -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"a cache needs at least one block of one token, got {num_blocks} blocks "
                             f"of {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.kv_cache_dim = kv_cache_dim
        # Uninitialised: every slot is written before it is read, and empty() avoids touching
        # gigabytes of memory at start-up.
        self.kv = torch.empty(num_layers, num_blocks * block_size, kv_cache_dim, dtype=dtype, device=device)

    @property
    def bytes_per_token(self) -> int:
        return self.kv.shape[0] * self.kv_cache_dim * self.kv.element_size()

    def write(self, layer_idx: int, slot_mapping: torch.Tensor, values_TC: torch.Tensor) -> None:
        self.kv[layer_idx].index_copy_(0, slot_mapping, values_TC.to(self.kv.dtype))

    def read(self, layer_idx: int, slots: torch.Tensor) -> torch.Tensor:
        return self.kv[layer_idx].index_select(0, slots)


def slots_for_positions(block_table: list[int], start: int, end: int, block_size: int) -> torch.Tensor:
    """Return the cache slots of token positions start..end-1 of a sequence with this block table."""
    positions = torch.arange(start, end)
    if end > len(block_table) * block_size:
        raise ValueError(f"positions up to {end} need {-(-end // block_size)} blocks, "
                         f"the block table has {len(block_table)}")
    blocks = torch.tensor(block_table, dtype=torch.long)[positions // block_size]
    return blocks * block_size + positions % block_size


@dataclass
class AttentionBatch:
    """Layout of one forward pass over several sequences packed along the token axis.

    Sequence i contributes `query_lens[i]` new tokens, stored consecutively in the packed batch
    in sequence order. They are the last tokens of its `context_lens[i]` tokens, and the tokens
    before them are already in the cache. With `block_tables` set, each new token's latent is written to the
    cache before attention, and attention reads the whole context back from it. Without block
    tables (training, or a cacheless forward) each sequence attends to its new tokens only.
    """

    query_lens: list[int]
    context_lens: list[int]
    block_tables: list[list[int]] | None = None
    block_size: int = 0
    slot_mapping: torch.Tensor | None = field(default=None, init=False)
    context_slots: list[torch.Tensor] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if len(self.query_lens) != len(self.context_lens):
            raise ValueError("query_lens and context_lens must have one entry per sequence")
        for query_len, context_len in zip(self.query_lens, self.context_lens):
            if not 0 < query_len <= context_len:
                raise ValueError(f"each sequence needs 0 < query_len <= context_len, got {query_len} and {context_len}")
        if self.block_tables is None:
            if self.query_lens != self.context_lens:
                raise ValueError("a batch with cached context needs block_tables")
            return
        if self.block_size < 1:
            raise ValueError("block_size must be set together with block_tables")
        new_slots, context_slots = [], []
        for table, query_len, context_len in zip(self.block_tables, self.query_lens, self.context_lens):
            slots = slots_for_positions(table, 0, context_len, self.block_size)
            context_slots.append(slots)
            new_slots.append(slots[context_len - query_len:])
        self.slot_mapping = torch.cat(new_slots)
        self.context_slots = context_slots

    @property
    def num_tokens(self) -> int:
        return sum(self.query_lens)

    @property
    def positions(self) -> torch.Tensor:
        """Position of every packed token within its sequence, shape (T,)."""
        return torch.cat([torch.arange(c - q, c) for q, c in zip(self.query_lens, self.context_lens)])

    @property
    def last_token_indices(self) -> torch.Tensor:
        """Packed index of each sequence's last new token, where its next-token logits come from."""
        ends = torch.tensor(self.query_lens).cumsum(0)
        return ends - 1

    @classmethod
    def prefill(cls, lengths: list[int]) -> AttentionBatch:
        """Build a cacheless batch of whole sequences (training and reference checks)."""
        return cls(query_lens=list(lengths), context_lens=list(lengths))
