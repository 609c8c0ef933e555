"""INT4 weights in compressed-tensors' `pack-quantized` format, the format of Kimi K2.5's routed experts.

One quantized [out, in] weight is stored as three tensors:

- `weight_packed`, int32 [out, ceil(in/8)]: values q in [-8, 7] stored as q + 8 in 4-bit nibbles,
  eight to a word along the input dimension. Element 8c + i of a row sits in bits 4i..4i+3 of
  word c, least significant nibble first. A top nibble of 8 or more makes the word negative.
- `weight_scale`, bf16 [out, ceil(in/32)]: one scale per group of 32 consecutive input columns.
- `weight_shape`, int32 [2]: the unpacked (out, in).

The weight is w[r, j] = q[r, j] · weight_scale[r, j // 32]. The scheme is symmetric, so there
is no zero point.

PyTorch's CPU INT4 matmul (`torch.ops.aten._weight_int4pack_mm_for_cpu`, read in PyTorch 2.13's
aten/src/ATen/native/cpu/int4mm_kernel.cpp and checked by experiment) computes, in fp32,
w = (nibble - 8) · scale + zero from its own packed layout and a (in/32, out, 2) table of
(scale, zero) pairs. Passing the stored nibble q + 8 unchanged, the same scale and a zero of 0
reproduces the format exactly: `to_cpu_int4pack` builds those operands.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Sequence

import torch

GROUP_SIZE = 32
Q_MIN, Q_MAX = -8, 7
NIBBLE_OFFSET = 8  # stored nibble = q + NIBBLE_OFFSET
NIBBLES_PER_WORD = 8
PARTS = ("weight_packed", "weight_scale", "weight_shape")

# Output rows of the CPU kernel's packing op come in blocks, so it requires a multiple of 16.
CPU_KERNEL_ROW_MULTIPLE = 16


def packed_shape(out_features: int, in_features: int) -> tuple[int, int]:
    """Return the shape of `weight_packed` for an [out, in] weight."""
    return out_features, math.ceil(in_features / NIBBLES_PER_WORD)


def scale_shape(out_features: int, in_features: int, group_size: int = GROUP_SIZE) -> tuple[int, int]:
    """Return the shape of `weight_scale` for an [out, in] weight."""
    return out_features, math.ceil(in_features / group_size)


def shape_values(weight_shape: torch.Tensor | Sequence[int]) -> tuple[int, int]:
    """Return (out, in) from a `weight_shape` tensor or a pair of ints."""
    values = weight_shape.tolist() if isinstance(weight_shape, torch.Tensor) else list(weight_shape)
    if len(values) != 2:
        raise ValueError(f"weight_shape must contain two values (out, in), got {values}")
    return int(values[0]), int(values[1])


def check_parts(weight_packed: torch.Tensor, weight_scale: torch.Tensor | None,
                weight_shape: torch.Tensor | Sequence[int]) -> tuple[int, int]:
    """Check that the packed words (and the scales, if given) fit `weight_shape`; return (out, in)."""
    out_features, in_features = _check_packed(weight_packed, weight_shape)
    if weight_scale is not None:
        expected = scale_shape(out_features, in_features)
        if tuple(weight_scale.shape) != expected or not weight_scale.is_floating_point():
            raise ValueError(f"weight_scale has shape {list(weight_scale.shape)} and dtype {weight_scale.dtype}, "
                             f"but weight_shape {[out_features, in_features]} needs a float tensor of shape "
                             f"{list(expected)} (one scale per {GROUP_SIZE} inputs)")
    return out_features, in_features


def _check_packed(weight_packed: torch.Tensor, weight_shape: torch.Tensor | Sequence[int]) -> tuple[int, int]:
    out_features, in_features = shape_values(weight_shape)
    if weight_packed.dtype != torch.int32:
        raise ValueError(f"weight_packed must be int32, got {weight_packed.dtype}")
    expected = packed_shape(out_features, in_features)
    if tuple(weight_packed.shape) != expected:
        raise ValueError(f"weight_packed has shape {list(weight_packed.shape)}, but weight_shape "
                         f"{[out_features, in_features]} needs {list(expected)} (8 values per int32)")
    return out_features, in_features


def _shifts(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return torch.arange(0, 4 * NIBBLES_PER_WORD, 4, dtype=dtype, device=device)


def unpack_nibbles(weight_packed: torch.Tensor, in_features: int) -> torch.Tensor:
    """Return the stored nibbles q + 8, int32 [out, in] in 0..15, of int32 words [out, ceil(in/8)].

    Shift then mask: the arithmetic shift of a negative word brings copies of the sign bit into
    the top, and the mask removes them.
    """
    if sys.byteorder == "little" and weight_packed.is_contiguous():
        # On a little-endian machine byte k of a word contains elements 2k (low nibble) and 2k + 1
        # (high nibble), so splitting the bytes gives the elements in order at a quarter of the
        # memory traffic of shifting int32 words.
        as_bytes = weight_packed.view(torch.uint8)
        nibbles = torch.stack((as_bytes & 0xF, as_bytes >> 4), dim=-1).flatten(-2)
        return nibbles[..., :in_features].to(torch.int32)
    nibbles = (weight_packed.unsqueeze(-1) >> _shifts(weight_packed.device, torch.int32)) & 0xF
    return nibbles.flatten(-2)[..., :in_features]


def unpack_int4(weight_packed: torch.Tensor, weight_shape: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """Return the quantized values q, int8 [out, in] in [-8, 7]."""
    _, in_features = _check_packed(weight_packed, weight_shape)
    return (unpack_nibbles(weight_packed, in_features) - NIBBLE_OFFSET).to(torch.int8)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Pack integer values q [out, in] in [-8, 7] into int32 words [out, ceil(in/8)].

    A row whose length is not a multiple of 8 is padded with zero nibbles, as compressed-tensors
    pads it.
    """
    if q.ndim != 2 or q.is_floating_point() or q.is_complex():
        raise ValueError(f"pack_int4 takes a 2-D integer tensor, got {q.dtype} of shape {list(q.shape)}")
    if q.numel() and (int(q.min()) < Q_MIN or int(q.max()) > Q_MAX):
        raise ValueError(f"INT4 values must lie in [{Q_MIN}, {Q_MAX}], got [{int(q.min())}, {int(q.max())}]")
    out_features, in_features = q.shape
    num_words = packed_shape(out_features, in_features)[1]
    nibbles = q.to(torch.int64) + NIBBLE_OFFSET
    nibbles = torch.nn.functional.pad(nibbles, (0, num_words * NIBBLES_PER_WORD - in_features))
    words = (nibbles.view(out_features, num_words, NIBBLES_PER_WORD) << _shifts(q.device, torch.int64)).sum(-1)
    # The words are unsigned 32-bit values; store them as the int32 with the same bits.
    words = torch.where(words >= 2**31, words - 2**32, words)
    return words.to(torch.int32)


def dequantize(weight_packed: torch.Tensor, weight_scale: torch.Tensor,
               weight_shape: torch.Tensor | Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Return w = q · scale, [out, in], multiplied in fp32 and then cast to `dtype`."""
    _, in_features = check_parts(weight_packed, weight_scale, weight_shape)
    q = unpack_nibbles(weight_packed, in_features) - NIBBLE_OFFSET
    scale = weight_scale.float().repeat_interleave(GROUP_SIZE, dim=1)[:, :in_features]
    return (q.float() * scale).to(dtype)


def quantize_symmetric_int4(weight: torch.Tensor, group_size: int = GROUP_SIZE,
                            scale_dtype: torch.dtype = torch.bfloat16
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize an [out, in] weight to (weight_packed, weight_scale, weight_shape).

    Min-max symmetric, as compressed-tensors computes it for `symmetric: true, strategy: group`:
    scale = max|w| / 7.5 over each group, in the weight's dtype and then rounded to
    `scale_dtype`; a zero scale becomes that dtype's eps. Then q = round(clamp(w / scale, -8, 7)),
    rounding half to even and dividing in the weight's dtype. For a bf16 weight the result is
    bit-identical to compressed-tensors 0.20; for an fp32 weight it matches compressed-tensors
    with `scale_dtype` set, since q is computed from the rounded scale that is stored.

    Other group sizes give valid compressed-tensors tensors, but the rest of this package reads
    group size 32 only, the size of the Kimi K2.5 checkpoint.
    """
    if weight.ndim != 2 or not weight.is_floating_point():
        raise ValueError(f"expected a 2-D float weight, got {weight.dtype} of shape {list(weight.shape)}")
    out_features, in_features = weight.shape
    if in_features % group_size != 0:
        raise ValueError(f"input size {in_features} is not a multiple of the group size {group_size}")
    groups = weight.detach().reshape(out_features, in_features // group_size, group_size)
    # 7.5 = (Q_MAX - Q_MIN) / 2: compressed-tensors maps max|w| to the middle of 7 and 8.
    half_range = (Q_MAX - Q_MIN) / 2
    scale = (groups.abs().amax(dim=-1) / half_range).to(scale_dtype)
    scale = torch.where(scale == 0, torch.finfo(scale_dtype).eps, scale).to(scale_dtype)
    scaled = groups / scale.to(weight.dtype).unsqueeze(-1)
    q = torch.clamp(scaled, Q_MIN, Q_MAX).round().to(torch.int8).view(out_features, in_features)
    return pack_int4(q), scale, torch.tensor([out_features, in_features], dtype=torch.int32)


# ----- PyTorch's CPU INT4 kernel -------------------------------------------------------------------

def cpu_kernel_available() -> bool:
    """Return whether this PyTorch build has the CPU INT4 matmul and its packing op."""
    ops = torch.ops.aten
    return hasattr(ops, "_weight_int4pack_mm_for_cpu") and hasattr(ops, "_convert_weight_to_int4pack_for_cpu")


def cpu_kernel_supports(out_features: int, in_features: int, group_size: int = GROUP_SIZE) -> bool:
    """Return whether the CPU kernel can run an [out, in] weight with this group size."""
    return (cpu_kernel_available() and out_features % CPU_KERNEL_ROW_MULTIPLE == 0
            and in_features % group_size == 0 and group_size in (32, 64, 128, 256))


def to_cpu_int4pack(weight_packed: torch.Tensor, weight_scale: torch.Tensor,
                    weight_shape: torch.Tensor | Sequence[int], dtype: torch.dtype
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Convert one weight to the operands of `_weight_int4pack_mm_for_cpu`.

    Returns the packed weight, uint8 [out, in/2], and the (scale, zero) table [in/32, out, 2] in
    `dtype`, which must be the dtype of the activations. The packed layout is blocked and differs
    between AVX512, AVX2 and other builds, so this package never writes it to disk.
    """
    out_features, in_features = check_parts(weight_packed, weight_scale, weight_shape)
    if not cpu_kernel_supports(out_features, in_features):
        raise ValueError(f"the CPU INT4 kernel cannot run a [{out_features}, {in_features}] weight: it needs "
                         f"out divisible by {CPU_KERNEL_ROW_MULTIPLE} and in divisible by {GROUP_SIZE}")
    nibbles = unpack_nibbles(weight_packed.cpu(), in_features).contiguous()
    # The second argument (inner_k_tiles) only matters for the CUDA layout; the CPU op ignores it.
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(nibbles, 1)
    scales_and_zeros = torch.zeros(in_features // GROUP_SIZE, out_features, 2, dtype=dtype)
    scales_and_zeros[..., 0] = weight_scale.t()
    return packed, scales_and_zeros


def from_cpu_int4pack(packed: torch.Tensor, scales_and_zeros: torch.Tensor, out_features: int,
                      in_features: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Convert kernel operands back to (weight_packed int32, weight_scale bf16); inverse of `to_cpu_int4pack`."""
    source = _cpu_int4pack_source_index(out_features, in_features)
    stored = torch.stack((packed & 0xF, packed >> 4), dim=-1).flatten()
    nibbles = torch.empty(out_features * in_features, dtype=torch.int64)
    nibbles[source] = stored.to(torch.int64)
    q = nibbles.view(out_features, in_features) - NIBBLE_OFFSET
    if bool((scales_and_zeros[..., 1] != 0).any()):
        raise ValueError("the (scale, zero) table has nonzero zeros, which the symmetric format cannot store")
    return pack_int4(q), scales_and_zeros[..., 0].t().to(torch.bfloat16).contiguous()


# Two entries: the gate_up and down shapes of one model. A Kimi K2.5 gate_up entry is 235 MB.
@functools.lru_cache(maxsize=2)
def _cpu_int4pack_source_index(out_features: int, in_features: int) -> torch.Tensor:
    """For each nibble of the kernel's packed [out, in/2] bytes (low nibble first), its flat index r·in + j.

    The packing op only moves nibbles, so packing the base-16 digits of every element's own
    index recovers where each element went, whatever the CPU-specific layout is.
    """
    count = out_features * in_features
    index = torch.arange(count, dtype=torch.int64)
    source = torch.zeros(count, dtype=torch.int64)
    for digit in range(max(1, math.ceil(math.log2(count) / 4))):
        digits = ((index >> (4 * digit)) & 0xF).to(torch.int32).view(out_features, in_features)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(digits, 1)
        stored = torch.stack((packed & 0xF, packed >> 4), dim=-1).flatten()
        source |= stored.to(torch.int64) << (4 * digit)
    if not torch.equal(source.sort().values, index):
        raise RuntimeError("torch's CPU INT4 packing op does not permute nibbles as expected; "
                           "cannot convert packed experts back to the checkpoint format")
    return source
