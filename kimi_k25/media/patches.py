"""The native-resolution rule shared by images and video frames: resize, pad, normalize, patchify.

For width W, height H, patch limit N, per-side limit S (in patches) and patch size P:

    s  = min(1, sqrt(N / (max(1, W // P) · max(1, H // P))), S·P / W, S·P / H)
    W' = min(max(1, floor(W·s)), S·P), and H' likewise (truncation, never rounding up)

The image is resized to (W', H') with PIL's BICUBIC filter, zero-padded at the bottom and right to
multiples of P·merge (28 px), normalized as (x / 255 − mean) / std and cut into P×P patches in
raster order. The prompt carries (Hp / 28)·(Wp / 28) tokens for it. This is the rule of the
official Kimi K2.5 processor; transformers 5.25 computes the same sizes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from kimi_k25.media.config import MediaConfig
from kimi_k25.media.items import GridTHW


@dataclass(frozen=True)
class ResizePlan:
    """Sizes in pixels that the native-resolution rule picks for one image or frame."""

    width: int
    height: int
    padded_width: int
    padded_height: int
    patch_size: int
    merge_kernel_size: int

    @property
    def grid_hw(self) -> tuple[int, int]:
        """(h, w) in patches after padding."""
        return self.padded_height // self.patch_size, self.padded_width // self.patch_size

    @property
    def num_tokens(self) -> int:
        grid_h, grid_w = self.grid_hw
        return (grid_h // self.merge_kernel_size) * (grid_w // self.merge_kernel_size)


def plan_resize(width: int, height: int, patch_limit: int, config: MediaConfig) -> ResizePlan:
    """Apply the native-resolution rule to a `width` × `height` image under `patch_limit` patches."""
    if width < 1 or height < 1:
        raise ValueError(f"image size must be at least 1×1 pixels, got {width}×{height}")
    patch = config.patch_size
    side_pixels = config.patch_limit_on_one_side * patch

    # The total budget scales both sides, hence the square root. Sides shorter than one patch count as one.
    scale_for_total = math.sqrt(patch_limit / (max(1, width // patch) * max(1, height // patch)))
    scale = min(1.0, scale_for_total, side_pixels / width, side_pixels / height)

    new_width = min(max(1, int(width * scale)), side_pixels)
    new_height = min(max(1, int(height * scale)), side_pixels)

    multiple = config.merged_patch_pixels
    return ResizePlan(
        width=new_width,
        height=new_height,
        padded_width=new_width + (multiple - new_width % multiple) % multiple,
        padded_height=new_height + (multiple - new_height % multiple) % multiple,
        patch_size=patch,
        merge_kernel_size=config.merge_kernel_size,
    )


def resize_and_pad(image: Image.Image, plan: ResizePlan) -> np.ndarray:
    """Resize an RGB image to the plan's size and zero-pad it at the bottom and right; uint8 (Hp, Wp, 3)."""
    if image.mode != "RGB":
        raise ValueError(f"resize_and_pad takes RGB images, got mode {image.mode}")
    if image.size != (plan.width, plan.height):
        image = image.resize((plan.width, plan.height), resample=Image.Resampling.BICUBIC)
    padded = np.zeros((plan.padded_height, plan.padded_width, 3), dtype=np.uint8)
    padded[: plan.height, : plan.width] = np.asarray(image)
    return padded


def normalization_table(config: MediaConfig) -> np.ndarray:
    """Return float32 (256, 3): the normalized value of each 8-bit level in each channel.

    Computed in the official processor's order: level / 255 rounded to float32, minus mean, times
    1 / std. transformers' fused (level − 255·mean) / (255·std) differs by at most one float32 ulp.
    """
    levels = (np.arange(256, dtype=np.float64) / 255.0).astype(np.float32)[:, None]
    table = levels - np.asarray(config.image_mean, dtype=np.float64)[None, :]
    table = table.astype(np.float32) * (1.0 / np.asarray(config.image_std, dtype=np.float64))[None, :]
    return table.astype(np.float32)


def frames_to_patches(frames: Sequence[np.ndarray], config: MediaConfig) -> tuple[torch.Tensor, GridTHW]:
    """Normalize padded uint8 frames (Hp, Wp, 3) of one item and cut them into `pixel_values` (t·h·w, 3, P, P)."""
    if not frames:
        raise ValueError("frames_to_patches needs at least one frame")
    stacked = np.stack(frames, axis=0)
    num_frames, padded_height, padded_width, _ = stacked.shape
    patch = config.patch_size
    if padded_height % patch or padded_width % patch:
        raise ValueError(f"frame size {padded_width}×{padded_height} is not a multiple of the patch size {patch}")

    table = normalization_table(config)
    normalized = table[stacked, np.arange(3)]

    grid_h, grid_w = padded_height // patch, padded_width // patch
    # (t, h, P, w, P, C) -> (t, h, w, C, P, P): patches in raster order, channels first inside a patch.
    patches = normalized.reshape(num_frames, grid_h, patch, grid_w, patch, 3).transpose(0, 1, 3, 5, 2, 4)
    patches = np.ascontiguousarray(patches).reshape(-1, 3, patch, patch)
    return torch.from_numpy(patches), (num_frames, grid_h, grid_w)
