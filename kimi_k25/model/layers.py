"""Small building blocks of the text decoder: RMSNorm, YaRN rotary embedding, SwiGLU MLP."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kimi_k25.model.config import TextConfig, yarn_mscale


class RMSNorm(nn.Module):
    """x·rsqrt(mean(x²) + eps)·weight, normalised in fp32 and multiplied by the weight directly."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        input_dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(input_dtype)


def yarn_inv_freq(config: TextConfig) -> tuple[torch.Tensor, float]:
    """Return the rotary inverse frequencies (qk_rope_head_dim/2,) and the cos/sin multiplier.

    Without `rope_scaling` this is plain RoPE. With YaRN, dims that turn fewer than `beta_slow`
    times over the original context are interpolated by `factor`. Dims that turn more than
    `beta_fast` times keep their frequency, and the band between is blended linearly. The band
    edges are floored and ceiled as in the DeepSeek-V3 reference.
    """
    dim = config.qk_rope_head_dim
    base = config.rope_theta
    # Built on the CPU even when the model is constructed on the meta device.
    exponents = torch.arange(0, dim, 2, dtype=torch.float32, device="cpu") / dim
    pos_freqs = base ** exponents
    inv_freq = 1.0 / pos_freqs
    scaling = config.rope_scaling
    if scaling is None:
        return inv_freq, 1.0

    def correction_dim(num_rotations: float) -> float:
        context = scaling.original_max_position_embeddings
        return dim * math.log(context / (num_rotations * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(correction_dim(scaling.beta_fast)), 0)
    high = min(math.ceil(correction_dim(scaling.beta_slow)), dim - 1)
    if low == high:
        high += 0.001  # avoids a division by zero in the ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float32, device="cpu") - low) / (high - low)).clamp(0, 1)
    inv_freq = (1.0 / (scaling.factor * pos_freqs)) * ramp + inv_freq * (1 - ramp)

    if scaling.mscale and scaling.mscale_all_dim:
        attention_factor = yarn_mscale(scaling.factor, scaling.mscale) / yarn_mscale(scaling.factor, scaling.mscale_all_dim)
    else:
        attention_factor = yarn_mscale(scaling.factor, 1.0)
    return inv_freq, attention_factor


class RotaryEmbedding(nn.Module):
    """Cos and sin tables for the shared rotary part of MLA queries and keys."""

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        # A plain attribute, not a buffer: it is derived from the config, never loaded or moved
        # with the weights, so building the model on the meta device leaves it intact.
        self.inv_freq, self.attention_factor = yarn_inv_freq(config)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Return cos and sin of shape (T, qk_rope_head_dim/2) for positions of shape (T,)."""
        inv_freq = self.inv_freq.to(positions.device)
        freqs = positions.float()[:, None] * inv_freq[None, :]
        cos = freqs.cos() * self.attention_factor
        sin = freqs.sin() * self.attention_factor
        return cos.to(dtype), sin.to(dtype)


def apply_rotary_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate dims (2i, 2i+1) of the last axis by angle i, the checkpoint's interleaved layout.

    The result comes out de-interleaved (all first members of the pairs, then all second
    members). Queries and keys get the same permutation, so q·k is unchanged and the cached
    keys stay consistent; transformers produces the same layout.

    x: (T, ..., rope_dim); cos, sin: (T, rope_dim/2), broadcast over the middle axes.
    """
    extra_dims = x.dim() - 2
    cos = cos.view(cos.shape[0], *([1] * extra_dims), cos.shape[-1])
    sin = sin.view(sin.shape[0], *([1] * extra_dims), sin.shape[-1])
    x1 = x[..., 0::2]
    x2 = x[..., 1::2]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for a fused projection whose first half is gate and second half is up."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


class MLP(nn.Module):
    """SwiGLU feed-forward down(silu(gate(x)) * up(x)): the dense layers and the shared expert.

    Gate and up are one fused (2I, D) projection, gate rows first, so one matrix product reads
    both; the loader fills the halves from the checkpoint's separate gate_proj and up_proj.
    """

    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.gate_up_proj = nn.Linear(hidden_size, 2 * intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(swiglu(self.gate_up_proj(x)))
