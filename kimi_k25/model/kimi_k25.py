"""The whole Kimi K2.5 model: text decoder, and for multimodal checkpoints the vision tower and projector.

    token ids ──embed──┐
                       ├─ placeholder rows replaced in order ─► decoder ─► lm_head ─► logits
    pixels ─► vision_tower ─► mm_projector ┘
"""

from __future__ import annotations

import torch
from torch import nn

from kimi_k25.model.cache import AttentionBatch, LatentCache
from kimi_k25.model.config import KimiK25Config
from kimi_k25.model.text import TextModel
from kimi_k25.model.vision import GridTHW, PatchMergerProjector, VisionTower


class KimiK25Model(nn.Module):
    def __init__(self, config: KimiK25Config) -> None:
        super().__init__()
        self.config = config
        self.language_model = TextModel(config.text)
        self.vision_tower: VisionTower | None = None
        self.mm_projector: PatchMergerProjector | None = None
        if config.vision is not None:
            self.vision_tower = VisionTower(config.vision)
            self.mm_projector = PatchMergerProjector(config.vision)

    @property
    def has_vision(self) -> bool:
        return self.vision_tower is not None and self.mm_projector is not None

    def encode_media(self, pixel_values: torch.Tensor, grid_thws: list[GridTHW]) -> torch.Tensor:
        """Return one text-width embedding per media placeholder token, (Σ h·w/4, D)."""
        if not self.has_vision:
            raise ValueError("this checkpoint has no vision tower, so it cannot take images or video")
        merged = self.vision_tower(pixel_values.to(self.mm_projector.proj[0].weight.dtype), grid_thws)
        return self.mm_projector(merged)

    def embed(self, input_ids: torch.Tensor, media_embeds: torch.Tensor | None = None,
              media_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Look up token embeddings and overwrite placeholder rows, in order, with media embeddings.

        `media_mask` (T,) marks the rows to replace; by default every media placeholder token.
        """
        embeds = self.language_model.embed_tokens(input_ids)
        if media_embeds is None:
            return embeds
        mask = input_ids == self.config.media_placeholder_token_id if media_mask is None else media_mask
        num_placeholders = int(mask.sum())
        if num_placeholders != media_embeds.shape[0]:
            raise ValueError(f"the prompt has {num_placeholders} media placeholder tokens but the media "
                             f"produced {media_embeds.shape[0]} embeddings")
        embeds = embeds.clone()
        embeds[mask] = media_embeds.to(embeds.dtype)
        return embeds

    def forward(self, input_ids: torch.Tensor, batch: AttentionBatch, cache: LatentCache | None = None,
                media_embeds: torch.Tensor | None = None, media_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Return final hidden states (T, D) for packed token ids (T,)."""
        if media_embeds is None:
            return self.language_model(batch, input_ids=input_ids, cache=cache)
        embeds = self.embed(input_ids, media_embeds, media_mask)
        return self.language_model(batch, inputs_embeds=embeds, cache=cache)

    def compute_logits(self, hidden_TD: torch.Tensor) -> torch.Tensor:
        return self.language_model.compute_logits(hidden_TD)
