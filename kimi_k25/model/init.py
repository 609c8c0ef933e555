"""Random initialisation for models built from a config alone (tests, benchmarks, the bundled model)."""

from __future__ import annotations

import torch
from torch import nn

from kimi_k25.model.kimi_k25 import KimiK25Model
from kimi_k25.model.layers import RMSNorm
from kimi_k25.model.moe import RoutedExperts, Router


@torch.no_grad()
def init_random_weights(model: KimiK25Model, seed: int = 0, std: float = 0.02, bias_std: float = 0.0) -> KimiK25Model:
    """Fill every parameter deterministically: normal(0, std) weights, unit norms, zero biases.

    `bias_std` > 0 also draws the router's e_score_correction_bias, so tests exercise the path
    where selection and weighting use different scores.
    """
    generator = torch.Generator().manual_seed(seed)

    def normal_(tensor: torch.Tensor, scale: float = std) -> None:
        tensor.copy_(torch.randn(tensor.shape, generator=generator, dtype=torch.float32) * scale)

    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            normal_(module.weight)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.Embedding):
            normal_(module.weight)
        elif isinstance(module, (RMSNorm, nn.LayerNorm)):
            module.weight.fill_(1.0)
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
        elif isinstance(module, Router):
            normal_(module.weight)
            if bias_std > 0:
                normal_(module.e_score_correction_bias, bias_std)
            else:
                module.e_score_correction_bias.zero_()
        elif isinstance(module, RoutedExperts):
            # Gate then up, each over all experts, then down: the order of the unfused layout, so
            # that a seed gives the same weights as before gate and up were fused.
            inter = module.gate_up_proj.shape[1] // 2
            normal_(module.gate_up_proj[:, :inter])
            normal_(module.gate_up_proj[:, inter:])
            normal_(module.down_proj)
    if model.vision_tower is not None:
        normal_(model.vision_tower.patch_embed.pos_emb.weight)
    return model
