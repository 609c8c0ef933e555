"""MoonViT-3D, the Kimi K2.5 vision tower, and the patch-merger projector into the text model.

A media item is one image (t = 1) or one video chunk of t <= 4 frames, cut into 14×14 patches
on an (h, w) grid. Patches of all items are packed along one axis; each item attends only to
itself. After the encoder, the t frames of a chunk are averaged and each 2×2 window of patches
becomes one token of the text model.

Legend: N = packed patches, C = vision hidden size, M = merged tokens, Dt = text hidden size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kimi_k25.model.config import VisionConfig

ROPE_THETA = 10000.0
LAYER_NORM_EPS = 1e-5
GridTHW = tuple[int, int, int]


class LearnedPositionGrid(nn.Module):
    """Learned (height, width, C) position table, bicubically resampled to each item's grid."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(config.init_pos_emb_height, config.init_pos_emb_width, config.hidden_size))
        self.max_frames = config.init_pos_emb_time

    def spatial(self, height: int, width: int) -> torch.Tensor:
        """Return the table resized to (height * width, C), row-major."""
        if (height, width) == tuple(self.weight.shape[:2]):
            return self.weight.flatten(0, 1)
        table = self.weight.permute(2, 0, 1).unsqueeze(0)  # (1, C, H0, W0), resampled as an image
        resized = F.interpolate(table, size=(height, width), mode="bicubic", align_corners=False)
        return resized.squeeze(0).flatten(1).T

    def temporal(self, num_frames: int, device: torch.device) -> torch.Tensor:
        """Return the fixed sinusoid [sin(f·ω) ‖ cos(f·ω)] per frame f, (num_frames, C), ω_j = 10000^(-2j/C)."""
        dim = self.weight.shape[-1]
        inv_freq = 1.0 / (ROPE_THETA ** (torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim))
        angles = torch.arange(num_frames, dtype=torch.float32, device=device)[:, None] * inv_freq[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)

    def forward(self, grid_thws: list[GridTHW]) -> torch.Tensor:
        """Return the position term of every packed patch, (N, C), fp32."""
        parts = []
        for t, h, w in grid_thws:
            if t > self.max_frames:
                raise ValueError(f"a video chunk has {t} frames, the tower supports at most {self.max_frames}")
            spatial = self.spatial(h, w).float()  # (h*w, C)
            frames = spatial[None].expand(t, -1, -1)
            if t > 1:  # single images get no temporal term
                frames = frames + self.temporal(t, spatial.device)[:, None, :]
            parts.append(frames.reshape(t * h * w, -1))
        return torch.cat(parts, dim=0)


class PatchEmbed(nn.Module):
    """14×14 patch convolution plus the position grid."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size)
        self.pos_emb = LearnedPositionGrid(config)

    def forward(self, pixel_values: torch.Tensor, grid_thws: list[GridTHW]) -> torch.Tensor:
        """pixel_values (N, 3, P, P) -> (N, C)."""
        x_NC = self.proj(pixel_values).flatten(1)
        return x_NC + self.pos_emb(grid_thws).to(x_NC.dtype)


def vision_rope_angles(grid_thws: list[GridTHW], head_dim: int, device: torch.device) -> torch.Tensor:
    """Return the rotation angle of every complex pair of a head, (N, head_dim / 2), fp32.

    Pair p of a head uses frequency θ_k = 10000^(-4k/head_dim) with k = p // 2; even pairs turn
    by the patch's column index times θ_k, odd pairs by its row index. Every frame of a chunk
    uses the same angles.
    """
    num_freqs = head_dim // 4
    theta = 1.0 / (ROPE_THETA ** (torch.arange(num_freqs, dtype=torch.float32, device=device) * 4 / head_dim))
    parts = []
    for t, h, w in grid_thws:
        rows = torch.arange(h, device=device, dtype=torch.float32)[:, None].expand(h, w).flatten()
        cols = torch.arange(w, device=device, dtype=torch.float32)[None, :].expand(h, w).flatten()
        angles = torch.stack([cols[:, None] * theta, rows[:, None] * theta], dim=-1).flatten(1)  # (h*w, head_dim/2)
        parts.append(angles.repeat(t, 1))
    return torch.cat(parts, dim=0)


def apply_vision_rope(x_NHD: torch.Tensor, angles_NP: torch.Tensor) -> torch.Tensor:
    """Rotate dims (2p, 2p+1) of each head as the complex number x·e^(i·angle_p), in fp32."""
    pairs = x_NHD.float().reshape(*x_NHD.shape[:-1], -1, 2)
    rotation = torch.polar(torch.ones_like(angles_NP), angles_NP)[:, None, :]
    rotated = torch.view_as_real(torch.view_as_complex(pairs.contiguous()) * rotation)
    return rotated.flatten(-2).to(x_NHD.dtype)


class VisionMLP(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.fc0 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc1 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc1(F.gelu(self.fc0(x), approximate="tanh"))


class VisionBlock(nn.Module):
    """Pre-LayerNorm encoder block with fused qkv and non-causal attention within each media item."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.norm0 = nn.LayerNorm(config.hidden_size, eps=LAYER_NORM_EPS)
        self.wqkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.wo = nn.Linear(config.hidden_size, config.hidden_size)
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=LAYER_NORM_EPS)
        self.mlp = VisionMLP(config)

    def forward(self, x_NC: torch.Tensor, angles_NP: torch.Tensor, item_lens: list[int]) -> torch.Tensor:
        x_NC = x_NC + self.wo(self._attention(self.norm0(x_NC), angles_NP, item_lens))
        return x_NC + self.mlp(self.norm1(x_NC))

    def _attention(self, x_NC: torch.Tensor, angles_NP: torch.Tensor, item_lens: list[int]) -> torch.Tensor:
        num_patches = x_NC.shape[0]
        q, k, v = self.wqkv(x_NC).view(num_patches, 3, self.num_heads, self.head_dim).unbind(1)
        q, k = apply_vision_rope(q, angles_NP), apply_vision_rope(k, angles_NP)
        outputs = []
        for q_i, k_i, v_i in zip(q.split(item_lens), k.split(item_lens), v.split(item_lens)):
            # 4-D inputs (1, H, n, D) let PyTorch pick its fused CPU attention kernel; 3-D ones do not.
            q_i, k_i, v_i = (x.transpose(0, 1)[None] for x in (q_i, k_i, v_i))
            out = F.scaled_dot_product_attention(q_i, k_i, v_i)[0]
            outputs.append(out.transpose(0, 1).reshape(-1, self.num_heads * self.head_dim))
        return torch.cat(outputs, dim=0)


class VisionTower(nn.Module):
    """Patches of packed media items in, per-item merged features (M, 4, C) out, before the projector."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.config = config
        self.patch_embed = PatchEmbed(config)
        self.blocks = nn.ModuleList(VisionBlock(config) for _ in range(config.num_hidden_layers))
        self.final_layernorm = nn.LayerNorm(config.hidden_size, eps=LAYER_NORM_EPS)

    def forward(self, pixel_values: torch.Tensor, grid_thws: list[GridTHW]) -> torch.Tensor:
        """pixel_values (N, 3, P, P) with N = Σ t·h·w -> merged features (Σ h·w/4, 4, C)."""
        expected = sum(t * h * w for t, h, w in grid_thws)
        if pixel_values.shape[0] != expected:
            raise ValueError(f"grid_thws describe {expected} patches, pixel_values has {pixel_values.shape[0]}")
        for t, h, w in grid_thws:
            if h % 2 or w % 2:
                raise ValueError(f"a media grid must have even height and width for the 2x2 merge, got {(t, h, w)}")
        item_lens = [t * h * w for t, h, w in grid_thws]

        x_NC = self.patch_embed(pixel_values, grid_thws)
        angles_NP = vision_rope_angles(grid_thws, self.config.head_dim, x_NC.device)
        for block in self.blocks:
            x_NC = block(x_NC, angles_NP, item_lens)
        x_NC = self.final_layernorm(x_NC)
        return temporal_pool_and_merge(x_NC, grid_thws)


def temporal_pool_and_merge(x_NC: torch.Tensor, grid_thws: list[GridTHW]) -> torch.Tensor:
    """Average each item over its frames and group 2×2 windows: (N, C) -> (M, 4, C), raster order.

    Sub-patch order inside a window is (0,0), (0,1), (1,0), (1,1).
    """
    merged = []
    for item, (t, h, w) in zip(x_NC.split([t * h * w for t, h, w in grid_thws]), grid_thws):
        pooled = item.float().view(t, h, w, -1).mean(dim=0)  # (h, w, C)
        windows = pooled.view(h // 2, 2, w // 2, 2, -1).permute(0, 2, 1, 3, 4)
        merged.append(windows.reshape((h // 2) * (w // 2), 4, -1).to(x_NC.dtype))
    return torch.cat(merged, dim=0)


class PatchMergerProjector(nn.Module):
    """LayerNorm each sub-patch, concatenate the 2×2 window, then Linear-GELU-Linear into the text width."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.pre_norm = nn.LayerNorm(config.hidden_size, eps=config.projector_ln_eps)
        self.proj = nn.Sequential(
            nn.Linear(config.merged_hidden_size, config.merged_hidden_size),
            nn.GELU(),
            nn.Linear(config.merged_hidden_size, config.text_hidden_size),
        )

    def forward(self, merged_M4C: torch.Tensor) -> torch.Tensor:
        """(M, 4, C) -> (M, Dt)."""
        return self.proj(self.pre_norm(merged_M4C).flatten(1))
