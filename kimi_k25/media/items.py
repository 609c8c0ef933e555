"""Processed media: what the vision tower takes and what the prompt carries for it."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import torch

from kimi_k25.chat import tokens

# (t, h, w) in 14×14 patches: frames, rows, columns.
GridTHW = tuple[int, int, int]


@dataclass(frozen=True, eq=False)
class MediaItem:
    """One input of the vision tower: an image, or one chunk of up to `temporal_merge_kernel_size` video frames.

    `pixel_values` is float32 (t·h·w, 3, patch_size, patch_size), listed frame by frame, rows top
    to bottom, columns left to right. `num_tokens` = (h / merge)·(w / merge) whatever t is, because
    the tower averages a chunk's frames. `prompt` is the item's text with a single MEDIA_PAD.
    """

    kind: Literal["image", "video_chunk"]
    pixel_values: torch.Tensor
    grid_thw: GridTHW
    num_tokens: int
    prompt: str
    # Size after the resize and before padding, as (width, height) in pixels.
    resized_size: tuple[int, int]
    # Chunk start in seconds, and the chunk's frame indices in the decoded stream; video chunks only.
    timestamp: float | None = None
    frame_indices: tuple[int, ...] = ()

    @cached_property
    def content_hash(self) -> str:
        """SHA-256 hex digest of the grid and the pixel values, the key of the encoder-output cache."""
        return media_content_hash(self.pixel_values, self.grid_thw)

    def expanded_prompt(self) -> str:
        """Return `prompt` with its MEDIA_PAD repeated `num_tokens` times."""
        return self.prompt.replace(tokens.MEDIA_PAD, tokens.MEDIA_PAD * self.num_tokens, 1)


@dataclass(frozen=True, eq=False)
class ProcessedVideo:
    """A video cut into chunks; each chunk is its own media item with its own timestamped prompt."""

    chunks: tuple[MediaItem, ...]
    # Frame rate and frame count of the decoded stream, which the sampling and timestamps use.
    fps: float
    num_frames: int
    # Sampled frame indices into the decoded stream, all chunks together.
    frame_indices: tuple[int, ...]
    # Frame size before resizing, in pixels.
    width: int
    height: int

    @property
    def num_tokens(self) -> int:
        return sum(chunk.num_tokens for chunk in self.chunks)

    def expanded_prompt(self) -> str:
        """Return the chunk prompts joined with no separator, each with its MEDIA_PAD repeated."""
        return "".join(chunk.expanded_prompt() for chunk in self.chunks)


ProcessedMedia = MediaItem | ProcessedVideo


def media_content_hash(pixel_values: torch.Tensor, grid_thw: GridTHW) -> str:
    """Return the SHA-256 hex digest of a grid and its float32 pixel values."""
    digest = hashlib.sha256()
    digest.update(("%d,%d,%d;" % tuple(grid_thw)).encode("ascii"))
    digest.update(str(tuple(pixel_values.shape)).encode("ascii"))
    # hashlib reads the array's buffer directly, so the pixels are not copied again.
    digest.update(pixel_values.detach().to("cpu", torch.float32).contiguous().numpy())
    return digest.hexdigest()


def concat_media(items: Sequence[MediaItem]) -> tuple[torch.Tensor, list[GridTHW]]:
    """Concatenate items into the `pixel_values` (Σ t·h·w, 3, P, P) and `grid_thws` that the vision tower takes."""
    if not items:
        raise ValueError("concat_media needs at least one media item")
    pixel_values = torch.cat([item.pixel_values for item in items], dim=0)
    return pixel_values, [item.grid_thw for item in items]
