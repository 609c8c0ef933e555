"""Parameter counts of a model built on the meta device (no weights are allocated)."""

from __future__ import annotations

import torch

from kimi_k25.model.config import KimiK25Config
from kimi_k25.model.kimi_k25 import KimiK25Model
from kimi_k25.model.moe import RoutedExperts


def count_parameters(config: KimiK25Config) -> dict[str, int]:
    """Count total and per-token active parameters the way Moonshot publishes them.

    `active_params` counts every text parameter that is not a routed expert (attention, norms,
    routers, shared experts, dense layers, the full embedding and the full lm_head) plus
    `num_experts_per_tok` routed experts in each MoE layer; the vision tower and projector are
    excluded. For Kimi K2.5 this gives the published 32.86B of 1.03T.
    """
    with torch.device("meta"):
        model = KimiK25Model(config)
    text = config.text

    def numel(module: torch.nn.Module | None) -> int:
        return 0 if module is None else sum(p.numel() for p in module.parameters())

    text_params = numel(model.language_model)
    routed = sum(numel(m) for m in model.language_model.modules() if isinstance(m, RoutedExperts))
    per_expert = 3 * text.hidden_size * text.moe_intermediate_size
    active_routed = text.num_moe_layers * text.num_experts_per_tok * per_expert
    if text.tie_word_embeddings:
        text_params -= text.vocab_size * text.hidden_size  # the shared matrix is counted once
    vision = numel(model.vision_tower)
    projector = numel(model.mm_projector)
    return {
        "total_params": text_params + vision + projector,
        "active_params": text_params - routed + active_routed,
        "text_params": text_params,
        "routed_expert_params": routed,
        "vision_tower_params": vision,
        "projector_params": projector,
        "num_layers": text.num_hidden_layers,
        "num_moe_layers": text.num_moe_layers,
        "num_experts_per_tok": text.num_experts_per_tok,
        "n_routed_experts": text.n_routed_experts,
    }
