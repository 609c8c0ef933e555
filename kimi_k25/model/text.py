"""The Kimi K2 / DeepSeek-V3 text decoder: embedding, pre-norm MLA + MoE blocks, final norm, lm_head."""

from __future__ import annotations

import torch
from torch import nn

from kimi_k25.model.attention import MLAttention
from kimi_k25.model.cache import AttentionBatch, LatentCache
from kimi_k25.model.config import TextConfig
from kimi_k25.model.layers import MLP, RMSNorm, RotaryEmbedding
from kimi_k25.model.moe import MoE


class DecoderLayer(nn.Module):
    """h += attn(norm(h)); h += ffn(norm(h)), where ffn is a dense MLP or the MoE."""

    def __init__(self, config: TextConfig, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = MLAttention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        if config.is_moe_layer(layer_idx):
            self.mlp: nn.Module = MoE(config)
        else:
            self.mlp = MLP(config.hidden_size, config.intermediate_size)

    def forward(self, h_TD: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], batch: AttentionBatch,
                cache: LatentCache | None) -> torch.Tensor:
        h_TD = h_TD + self.self_attn(self.input_layernorm(h_TD), rope, batch, cache)
        return h_TD + self.mlp(self.post_attention_layernorm(h_TD))


class TextModel(nn.Module):
    """The decoder over a packed batch: token ids (T,) in, final hidden states (T, D) out."""

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.rotary_emb = RotaryEmbedding(config)

    def forward(self, batch: AttentionBatch, input_ids: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None, cache: LatentCache | None = None) -> torch.Tensor:
        """Return final-normed hidden states (T, D); give either input_ids (T,) or inputs_embeds (T, D)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        h_TD = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        if h_TD.shape[0] != batch.num_tokens:
            raise ValueError(f"the batch layout covers {batch.num_tokens} tokens, the input has {h_TD.shape[0]}")
        rope = self.rotary_emb(batch.positions.to(h_TD.device), h_TD.dtype)
        for layer in self.layers:
            h_TD = layer(h_TD, rope, batch, cache)
        return self.norm(h_TD)

    def compute_logits(self, hidden_TD: torch.Tensor) -> torch.Tensor:
        """Project hidden states to fp32 vocabulary logits (T, vocab_size)."""
        return self.lm_head(hidden_TD).float()
