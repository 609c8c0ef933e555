"""Numerical parity of the vision path with transformers' Kimi_K25ForConditionalGeneration, in fp32.

Compared per case: the vision tower's merged features, the projector output, the logits of a
prompt with the media spliced in, and the greedy tokens of 8 decode steps through the cache.
"""

from __future__ import annotations

import pytest
import torch

from kimi_k25.checkpoint.loader import load_checkpoint
from kimi_k25.model.cache import AttentionBatch, LatentCache
from reference import build_reference_kimi_k25_model, text_config_dict, vision_config_dict, write_kimi_k25_checkpoint

TOLERANCE = 1e-4
DECODE_STEPS = 8

CASES = {
    "one_image": [(1, 6, 8)],
    "two_images_of_different_sizes": [(1, 4, 10), (1, 12, 6)],
    "video_chunk_of_four_frames": [(4, 6, 6)],
    "image_then_video_chunk": [(1, 8, 8), (3, 4, 6)],
}


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours - reference).abs().max() / reference.abs().max()).item()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    text_raw, vision_raw = text_config_dict(), vision_config_dict()
    reference = build_reference_kimi_k25_model(text_raw, vision_raw, seed=21)
    path = write_kimi_k25_checkpoint(reference, text_raw, vision_raw, tmp_path_factory.mktemp("vision"))
    return reference, load_checkpoint(path, dtype=torch.float32, progress=False)


def prompt_with_media(grids, placeholder: int, generator: torch.Generator) -> torch.Tensor:
    """Text tokens around one run of placeholders per media item."""
    parts = [torch.randint(3, 400, (5,), generator=generator)]
    for _, h, w in grids:
        parts.append(torch.full(((h // 2) * (w // 2),), placeholder))
        parts.append(torch.randint(3, 400, (3,), generator=generator))
    return torch.cat(parts)


@pytest.mark.parametrize("case", sorted(CASES))
def test_vision_path_matches_transformers(models, case):
    reference, ours = models
    grids = CASES[case]
    generator = torch.Generator().manual_seed(len(case))
    pixel_values = torch.randn(sum(t * h * w for t, h, w in grids), 3, 14, 14, generator=generator)
    grid_tensor = torch.tensor(grids)

    with torch.no_grad():
        ref_merged = reference.model.vision_tower(pixel_values, grid_thw=grid_tensor).pooler_output
        our_merged = ours.vision_tower(pixel_values, grids)
        assert our_merged.shape == ref_merged.shape
        assert relative_error(our_merged, ref_merged) <= TOLERANCE

        ref_projected = reference.model.mm_projector(ref_merged).squeeze(1)
        our_projected = ours.mm_projector(our_merged)
        assert our_projected.shape == ref_projected.shape
        assert relative_error(our_projected, ref_projected) <= TOLERANCE

        ids = prompt_with_media(grids, ours.config.media_placeholder_token_id, generator)
        ref_logits = reference(input_ids=ids[None], pixel_values=pixel_values, image_grid_thw=grid_tensor).logits[0]
        media_embeds = ours.encode_media(pixel_values, grids)
        our_logits = ours.compute_logits(ours(ids, AttentionBatch.prefill([len(ids)]), media_embeds=media_embeds))
        assert relative_error(our_logits, ref_logits) <= TOLERANCE


def test_greedy_tokens_with_media_match(models):
    reference, ours = models
    grids = CASES["two_images_of_different_sizes"]
    generator = torch.Generator().manual_seed(5)
    pixel_values = torch.randn(sum(t * h * w for t, h, w in grids), 3, 14, 14, generator=generator)
    ids = prompt_with_media(grids, ours.config.media_placeholder_token_id, generator)
    with torch.no_grad():
        expected = reference.generate(input_ids=ids[None], pixel_values=pixel_values,
                                      image_grid_thw=torch.tensor(grids), max_new_tokens=DECODE_STEPS,
                                      min_new_tokens=DECODE_STEPS, do_sample=False, eos_token_id=None,
                                      pad_token_id=0)[0, len(ids):].tolist()

        text = ours.config.text
        cache = LatentCache(text.num_hidden_layers, 16, 8, text.kv_cache_dim, torch.float32)
        table = list(range(16))
        media = ours.encode_media(pixel_values, grids)
        batch = AttentionBatch([len(ids)], [len(ids)], [table], 8)
        logits = ours.compute_logits(ours(ids, batch, cache, media_embeds=media)[-1:])
        tokens = [int(logits[0].argmax())]
        for step in range(DECODE_STEPS - 1):
            batch = AttentionBatch([1], [len(ids) + step + 1], [table], 8)
            logits = ours.compute_logits(ours(torch.tensor(tokens[-1:]), batch, cache))
            tokens.append(int(logits[0].argmax()))
    assert tokens == expected
