"""Run one engine step on the model: pack the scheduled tokens, forward, keep last-token logits."""

from __future__ import annotations

import torch

from kimi_k25.engine.scheduler import ScheduledSequence
from kimi_k25.model.cache import AttentionBatch, LatentCache
from kimi_k25.model.kimi_k25 import KimiK25Model


class ModelRunner:
    def __init__(self, model: KimiK25Model, cache: LatentCache) -> None:
        self.model = model
        self.cache = cache
        self.device = next(model.parameters()).device

    @torch.inference_mode()
    def run(self, work: list[ScheduledSequence]) -> torch.Tensor:
        """Compute the scheduled tokens of every sequence; return logits of each one's last token, (B, V) fp32.

        Rows of sequences whose prompt is still incomplete after this step are computed but unused.
        """
        chunks = [item.seq.token_ids[item.seq.num_computed_tokens:item.seq.num_computed_tokens + item.num_tokens]
                  for item in work]
        input_ids = torch.tensor([t for chunk in chunks for t in chunk], dtype=torch.long, device=self.device)
        batch = AttentionBatch(
            query_lens=[item.num_tokens for item in work],
            context_lens=[item.seq.num_computed_tokens + item.num_tokens for item in work],
            block_tables=[item.seq.block_table for item in work],
            block_size=self.cache.block_size,
        )
        media_embeds, media_mask = self._media_inputs(work, chunks)
        hidden = self.model(input_ids, batch, self.cache, media_embeds=media_embeds, media_mask=media_mask)
        logits = self.model.compute_logits(hidden[batch.last_token_indices.to(self.device)])
        for item in work:
            item.seq.num_computed_tokens += item.num_tokens
        return logits

    def _media_inputs(self, work: list[ScheduledSequence], chunks: list[list[int]]
                      ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Media embeddings for the placeholder tokens fed in this step, and the mask of their rows.

        Only sequences that carry media have rows replaced; a placeholder id in a text-only
        sequence stays an ordinary embedding lookup, and so does one the model generated.
        """
        if all(item.seq.media_embeds is None for item in work):
            return None, None
        placeholder = self.model.config.media_placeholder_token_id
        parts, mask_parts = [], []
        for item, chunk in zip(work, chunks):
            seq = item.seq
            new_ids = torch.tensor(chunk, dtype=torch.long)
            is_media = torch.zeros_like(new_ids, dtype=torch.bool)
            if seq.media_embeds is not None:
                start = seq.num_computed_tokens
                in_prompt = torch.arange(start, start + len(chunk)) < len(seq.prompt_ids)
                is_media = (new_ids == placeholder) & in_prompt
                first = seq.prompt_ids[:start].count(placeholder)
                parts.append(seq.media_embeds[first:first + int(is_media.sum())])
            mask_parts.append(is_media)
        return torch.cat(parts).to(self.device), torch.cat(mask_parts).to(self.device)
