"""Multi-head latent attention (MLA) as Kimi K2.5 and DeepSeek-V3 define it.

Legend: T = packed tokens of the step, S = context tokens of one sequence, H = heads,
N = qk_nope_head_dim, R = qk_rope_head_dim, V = v_head_dim, Lkv = kv_lora_rank.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kimi_k25.model.cache import AttentionBatch, LatentCache
from kimi_k25.model.config import TextConfig
from kimi_k25.model.layers import RMSNorm, apply_rotary_interleaved

# DeepSeek-V3's reference code and transformers build q_a_layernorm and kv_a_layernorm with the
# RMSNorm default eps instead of config.rms_norm_eps (vLLM passes rms_norm_eps; the difference is
# negligible). We follow the reference.
LATENT_NORM_EPS = 1e-6


class MLAttention(nn.Module):
    """Low-rank queries, one compressed latent per token for keys and values, and a rotary key shared by all heads."""

    def __init__(self, config: TextConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.qk_nope_head_dim = config.qk_nope_head_dim
        self.qk_rope_head_dim = config.qk_rope_head_dim
        self.qk_head_dim = config.qk_head_dim
        self.v_head_dim = config.v_head_dim
        self.kv_lora_rank = config.kv_lora_rank
        self.softmax_scale = config.softmax_scale

        if config.q_lora_rank is None:
            self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.qk_head_dim, bias=False)
        else:
            self.q_a_proj = nn.Linear(config.hidden_size, config.q_lora_rank, bias=False)
            self.q_a_layernorm = RMSNorm(config.q_lora_rank, LATENT_NORM_EPS)
            self.q_b_proj = nn.Linear(config.q_lora_rank, self.num_heads * self.qk_head_dim, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(config.hidden_size, config.kv_cache_dim, bias=False)
        self.kv_a_layernorm = RMSNorm(config.kv_lora_rank, LATENT_NORM_EPS)
        self.kv_b_proj = nn.Linear(config.kv_lora_rank, self.num_heads * (self.qk_nope_head_dim + self.v_head_dim), bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.v_head_dim, config.hidden_size, bias=False)

    def forward(self, x_TD: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], batch: AttentionBatch,
                cache: LatentCache | None) -> torch.Tensor:
        cos, sin = rope

        # queries: (T, H, N + R), rotary part rotated
        if hasattr(self, "q_proj"):
            q = self.q_proj(x_TD)
        else:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x_TD)))
        q = q.view(-1, self.num_heads, self.qk_head_dim)
        q_nope, q_rope = q.split([self.qk_nope_head_dim, self.qk_rope_head_dim], dim=-1)
        q_rope = apply_rotary_interleaved(q_rope, cos, sin)

        # compressed keys and values: normalised latent ‖ rotated shared key, (T, Lkv + R)
        latent, k_rope = self.kv_a_proj_with_mqa(x_TD).split([self.kv_lora_rank, self.qk_rope_head_dim], dim=-1)
        latent_kv = torch.cat([self.kv_a_layernorm(latent), apply_rotary_interleaved(k_rope, cos, sin)], dim=-1)
        if cache is not None and batch.slot_mapping is not None:
            cache.write(self.layer_idx, batch.slot_mapping, latent_kv)

        # per sequence, the cheaper of the two attention paths over its whole context
        use_cache = cache is not None and batch.context_slots is not None
        context_lens = batch.context_lens if use_cache else batch.query_lens
        absorbed = [self.prefers_absorbed(q_len, s_len) for q_len, s_len in zip(batch.query_lens, context_lens)]
        q_expanded = torch.cat([q_nope, q_rope], dim=-1) if not all(absorbed) else None
        q_latent = None
        if any(absorbed):
            # Moving queries into latent space is per token, so it runs once for the whole batch.
            w_uk, _ = self._absorbed_weights()
            q_latent = torch.cat([torch.einsum("thn,hnl->thl", q_nope, w_uk), q_rope], dim=-1)

        outputs: list[torch.Tensor] = []
        start = 0
        for i, query_len in enumerate(batch.query_lens):
            rows = slice(start, start + query_len)
            if use_cache:
                context = cache.read(self.layer_idx, batch.context_slots[i]).to(q.dtype)
            else:
                context = latent_kv[rows]
            if absorbed[i]:
                outputs.append(self._attend_latent(q_latent[rows], context))
            else:
                outputs.append(self._attend_expanded(q_expanded[rows], context))
            start += query_len

        if any(absorbed):
            # Back from latent space to per-head values, again once for every absorbed token.
            _, w_uv = self._absorbed_weights()
            latent_rows = torch.cat([out for out, is_latent in zip(outputs, absorbed) if is_latent])
            values = iter(torch.einsum("thl,hvl->thv", latent_rows, w_uv).flatten(1).split(
                [q_len for q_len, is_latent in zip(batch.query_lens, absorbed) if is_latent]))
            outputs = [next(values) if is_latent else out for out, is_latent in zip(outputs, absorbed)]
        return self.o_proj(torch.cat(outputs, dim=0))  # (T, H * V) in, (T, D) out

    def _absorbed_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return kv_b_proj split per head into W_UK (H, N, Lkv) and W_UV (H, V, Lkv), contiguous.

        Cached until the weight changes (its version counter moves, as under training), so that
        decoding does not copy the strided halves of kv_b_proj in every step.
        """
        weight = self.kv_b_proj.weight
        key = (weight.data_ptr(), weight._version, weight.dtype)
        if getattr(self, "_absorbed_key", None) != key:
            per_head = weight.detach().view(self.num_heads, self.qk_nope_head_dim + self.v_head_dim, self.kv_lora_rank)
            w_uk, w_uv = per_head.split([self.qk_nope_head_dim, self.v_head_dim], dim=1)
            self._absorbed = (w_uk.contiguous(), w_uv.contiguous())
            self._absorbed_key = key
        if weight.requires_grad and torch.is_grad_enabled():
            per_head = weight.view(self.num_heads, self.qk_nope_head_dim + self.v_head_dim, self.kv_lora_rank)
            return tuple(per_head.split([self.qk_nope_head_dim, self.v_head_dim], dim=1))
        return self._absorbed

    def prefers_absorbed(self, num_queries: int, num_context: int) -> bool:
        """Pick the cheaper attention path by multiply-adds.

        Expanded: build every head's keys and values from the S latents (S·H·(N+V)·Lkv), then
        attend in head space (Q·S·H·(N+R+V)). Absorbed: move the queries into latent space and
        back (2·Q·H·N·Lkv), then attend over the latents (Q·S·H·(2·Lkv+R)). Decoding (Q = 1,
        S large) is far cheaper absorbed; a prefill (Q = S) is cheaper expanded.
        """
        heads, nope, rope, value, rank = (self.num_heads, self.qk_nope_head_dim, self.qk_rope_head_dim,
                                          self.v_head_dim, self.kv_lora_rank)
        expanded = num_context * heads * (nope + value) * rank + num_queries * num_context * heads * (nope + rope + value)
        absorbed = 2 * num_queries * heads * nope * rank + num_queries * num_context * heads * (2 * rank + rope)
        return absorbed < expanded

    @staticmethod
    def _causal_mask(num_queries: int, num_context: int, device: torch.device) -> torch.Tensor | None:
        """Mask (Q, S) letting query i, at context position S - Q + i, attend to positions up to it."""
        if num_queries == 1:
            return None
        query_pos = torch.arange(num_queries, device=device)[:, None] + (num_context - num_queries)
        return torch.arange(num_context, device=device)[None, :] <= query_pos

    def _attend_expanded(self, q_QHD: torch.Tensor, context_SC: torch.Tensor) -> torch.Tensor:
        """Attention with per-head keys and values rebuilt from the latents; returns (Q, H * V)."""
        num_queries, num_context = q_QHD.shape[0], context_SC.shape[0]
        latent, k_rope = context_SC.split([self.kv_lora_rank, self.qk_rope_head_dim], dim=-1)
        kv = self.kv_b_proj(latent).view(num_context, self.num_heads, self.qk_nope_head_dim + self.v_head_dim)
        k_nope, v = kv.split([self.qk_nope_head_dim, self.v_head_dim], dim=-1)
        k = torch.cat([k_nope, k_rope[:, None, :].expand(-1, self.num_heads, -1)], dim=-1)

        mask = self._causal_mask(num_queries, num_context, q_QHD.device)
        out = F.scaled_dot_product_attention(
            q_QHD.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
            attn_mask=mask, scale=self.softmax_scale,
        )[0]  # (H, Q, V)
        return out.transpose(0, 1).reshape(num_queries, self.num_heads * self.v_head_dim)

    def _attend_latent(self, q_latent_QHC: torch.Tensor, context_SC: torch.Tensor) -> torch.Tensor:
        """Attention of latent-space queries (Q, H, Lkv + R) over the cached latents; returns (Q, H, Lkv).

        All heads share one key and value tensor (the latents), so the H heads of a query run as H
        rows of a single attention. The values are the whole cached row: the extra R rotary
        columns let PyTorch use its fused kernel (equal key and value widths) and are dropped after.
        """
        num_queries, num_context = q_latent_QHC.shape[0], context_SC.shape[0]
        q_rows = q_latent_QHC.reshape(1, 1, num_queries * self.num_heads, -1)
        mask = self._causal_mask(num_queries, num_context, q_rows.device)
        if mask is not None:
            mask = mask.repeat_interleave(self.num_heads, dim=0)  # one row per (query, head)
        kv = context_SC[None, None]
        out = F.scaled_dot_product_attention(q_rows, kv, kv, attn_mask=mask, scale=self.softmax_scale)
        return out[0, 0, :, :self.kv_lora_rank].view(num_queries, self.num_heads, self.kv_lora_rank)
