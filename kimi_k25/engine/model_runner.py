"""Run one engine step on the model: pack the scheduled sequences, forward, keep last-token logits."""

from __future__ import annotations

import torch

from kimi_k25.engine.sequence import Sequence
from kimi_k25.model.cache import AttentionBatch, LatentCache
from kimi_k25.model.kimi_k25 import KimiK25Model


class ModelRunner:
    def __init__(self, model: KimiK25Model, cache: LatentCache) -> None:
        self.model = model
        self.cache = cache
        self.device = next(model.parameters()).device

    @torch.inference_mode()
    def run(self, seqs: list[Sequence]) -> torch.Tensor:
        """Feed every sequence its uncomputed tokens; return next-token logits (len(seqs), V), fp32."""
        input_ids = torch.tensor(
            [t for seq in seqs for t in seq.token_ids[seq.num_computed_tokens:]], dtype=torch.long, device=self.device)
        batch = AttentionBatch(
            query_lens=[seq.num_new_tokens for seq in seqs],
            context_lens=[seq.num_tokens for seq in seqs],
            block_tables=[seq.block_table for seq in seqs],
            block_size=self.cache.block_size,
        )
        media_embeds, media_mask = self._media_inputs(seqs, input_ids)
        hidden = self.model(input_ids, batch, self.cache, media_embeds=media_embeds, media_mask=media_mask)
        logits = self.model.compute_logits(hidden[batch.last_token_indices.to(self.device)])
        for seq in seqs:
            seq.num_computed_tokens = seq.num_tokens
        return logits

    def _media_inputs(self, seqs: list[Sequence], input_ids: torch.Tensor
                      ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Media embeddings for the placeholder tokens fed in this step, and the mask of their rows.

        Only sequences that carry media have rows replaced; a placeholder id in a text-only
        sequence stays an ordinary embedding lookup.
        """
        if all(seq.media_embeds is None for seq in seqs):
            return None, None
        placeholder = self.model.config.media_placeholder_token_id
        parts, mask_parts = [], []
        for seq in seqs:
            new_ids = torch.tensor(seq.token_ids[seq.num_computed_tokens:], dtype=torch.long)
            is_media = torch.zeros_like(new_ids, dtype=torch.bool)
            if seq.media_embeds is not None:
                # Placeholders count only inside the prompt; a generated one is an ordinary token.
                in_prompt = torch.arange(seq.num_computed_tokens, seq.num_tokens) < len(seq.prompt_ids)
                is_media = (new_ids == placeholder) & in_prompt
                start = seq.prompt_ids[:seq.num_computed_tokens].count(placeholder)
                parts.append(seq.media_embeds[start:start + int(is_media.sum())])
            mask_parts.append(is_media)
        return torch.cat(parts).to(self.device), torch.cat(mask_parts).to(self.device)
