"""An LRU cache of vision-encoder outputs, keyed by the SHA-256 of a media item's grid and pixels.

A repeated image (the same picture sent again in a later turn of a conversation) then skips the
vision tower. Keys are content hashes of the processed pixels, so two different files that
decode and resize to the same pixels share an entry, and a change to the preprocessing settings
changes the key.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from kimi_k25.media.items import GridTHW, MediaItem, concat_media

# encode(pixel_values (Σ t·h·w, 3, P, P), grid_thws) -> (Σ tokens, D), the signature of KimiK25Model.encode_media.
Encoder = Callable[[torch.Tensor, list[GridTHW]], torch.Tensor]


@dataclass(frozen=True)
class CacheStats:
    """Counters of a MediaCache since it was created or cleared."""

    hits: int
    misses: int
    entries: int
    nbytes: int


class MediaCache:
    """A thread-safe LRU map from content hash to encoder output, bounded by entries and by bytes.

    An entry larger than `max_bytes` is never stored. Stored tensors are shared, not copied, so
    callers must not modify a tensor they put in or got out.
    """

    def __init__(self, max_entries: int | None = 1024, max_bytes: int | None = 1024**3) -> None:
        if max_entries is not None and max_entries <= 0:
            raise ValueError(f"max_entries must be positive or None, got {max_entries}")
        if max_bytes is not None and max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive or None, got {max_bytes}")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._nbytes = 0
        self._hits = 0
        self._misses = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> torch.Tensor | None:
        """Return the entry for `key` and mark it most recently used, or None."""
        with self._lock:
            value = self._entries.get(key)
            if value is None:
                self._misses += 1
                return None
            self._entries.move_to_end(key)
            self._hits += 1
            return value

    def put(self, key: str, value: torch.Tensor) -> bool:
        """Store `value` under `key`, evicting least recently used entries; False when it is too large to keep."""
        size = _nbytes(value)
        with self._lock:
            if self.max_bytes is not None and size > self.max_bytes:
                return False
            old = self._entries.pop(key, None)
            if old is not None:
                self._nbytes -= _nbytes(old)
            self._entries[key] = value
            self._nbytes += size
            self._evict()
            return True

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._nbytes = 0
            self._hits = 0
            self._misses = 0

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(hits=self._hits, misses=self._misses, entries=len(self._entries), nbytes=self._nbytes)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._entries

    def _evict(self) -> None:
        while self._entries and (
            (self.max_entries is not None and len(self._entries) > self.max_entries)
            or (self.max_bytes is not None and self._nbytes > self.max_bytes)
        ):
            _, evicted = self._entries.popitem(last=False)
            self._nbytes -= _nbytes(evicted)


def encode_with_cache(items: Sequence[MediaItem], encode: Encoder, cache: MediaCache | None) -> torch.Tensor:
    """Return the encoder output of `items` in order, (Σ num_tokens, D), encoding only the items not in `cache`.

    The missing items go through `encode` in one call; its output is split by each item's token
    count and stored. Raises ValueError when `encode` returns a different number of rows.
    """
    if not items:
        raise ValueError("encode_with_cache needs at least one media item")
    outputs: list[torch.Tensor | None] = [None] * len(items)
    missing: list[int] = []
    for position, item in enumerate(items):
        cached = cache.get(item.content_hash) if cache is not None else None
        if cached is None:
            missing.append(position)
        else:
            outputs[position] = cached

    if missing:
        pixel_values, grid_thws = concat_media([items[i] for i in missing])
        encoded = encode(pixel_values, grid_thws)
        expected = sum(items[i].num_tokens for i in missing)
        if encoded.shape[0] != expected:
            raise ValueError(f"the encoder returned {encoded.shape[0]} rows for {len(missing)} media items that need "
                             f"{expected} tokens")
        pieces = torch.split(encoded, [items[i].num_tokens for i in missing], dim=0)
        for position, piece in zip(missing, pieces):
            # clone() gives each entry its own storage, so a cached piece does not pin the whole batch output.
            piece = piece.clone() if cache is not None else piece
            outputs[position] = piece
            if cache is not None:
                cache.put(items[position].content_hash, piece)
    return torch.cat(outputs, dim=0)


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.element_size() * tensor.nelement()
