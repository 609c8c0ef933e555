"""Table from checkpoint tensor names to parameters of `KimiK25Model`.

| checkpoint name (official Kimi K2.5)                        | parameter                                  |
|-------------------------------------------------------------|--------------------------------------------|
| language_model.model.{embed_tokens,norm,layers.L.*}         | language_model.{embed_tokens,norm,layers.L.*} |
| language_model.lm_head.weight                               | language_model.lm_head.weight              |
| language_model.model.layers.L.mlp.experts.E.{gate,up}_proj.weight | language_model.layers.L.mlp.experts.gate_up_proj[E], first / second half of the rows |
| language_model.model.layers.L.mlp.experts.E.down_proj.weight | language_model.layers.L.mlp.experts.down_proj[E] |
| ….experts.E.{gate,up,down}_proj.{weight_packed,weight_scale,weight_shape} (INT4) | the same slices of `Int4RoutedExperts` |
| language_model.model.layers.L.mlp.{gate,up}_proj.weight (also shared_experts) | ….mlp.gate_up_proj.weight, first / second half of the rows |
| vision_tower.patch_embed.{proj,pos_emb}.*                   | vision_tower.patch_embed.{proj,pos_emb}.*  |
| vision_tower.encoder.blocks.B.* / .final_layernorm.*       | vision_tower.blocks.B.* / .final_layernorm.* |
| mm_projector.{pre_norm,proj.0,proj.2}.*                     | mm_projector.{pre_norm,proj.0,proj.2}.*    |

Also accepted: text-only DeepSeek-V3 / Kimi K2 names (`model.*`, `lm_head.weight`), the names
transformers uses in memory (`model.language_model.*`, top-level `lm_head`, stacked
`experts.gate_up_proj` / `experts.down_proj`, gate rows first as here), and the three names its
`save_pretrained` writes
differently from the official files (`language_model.model.blocks.L`,
`vision_tower.encoder.patch_embed`, `model.mm_projector`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum


class TargetKind(Enum):
    PARAM = "param"      # copy into the parameter, or into the slice named by expert and half
    INT4 = "int4"        # compressed-tensors pack-quantized expert part
    IGNORED = "ignored"  # deliberately dropped (multi-token-prediction layers)


@dataclass(frozen=True)
class Target:
    """Destination of one checkpoint tensor.

    `expert` selects one expert of a stacked (E, ...) parameter. `half` selects the first (0) or
    second (1) half of the rows, because gate and up projections are stored fused as one
    `gate_up_proj` with the gate rows first.
    """

    kind: TargetKind
    param: str = ""
    expert: int | None = None
    half: int | None = None
    int4_part: str = ""


# Prefix rewrites, tried in order; the first that matches wins.
_PREFIXES = (
    ("language_model.model.", "language_model."),
    ("language_model.lm_head.", "language_model.lm_head."),
    ("model.language_model.", "language_model."),
    ("model.mm_projector.", "mm_projector."),
    ("model.vision_tower.", "vision_tower."),
    ("model.", "language_model."),
    ("lm_head.", "language_model.lm_head."),
    ("vision_tower.encoder.patch_embed.", "vision_tower.patch_embed."),
    ("vision_tower.encoder.", "vision_tower."),
    ("vision_tower.", "vision_tower."),
    ("mm_projector.", "mm_projector."),
)

_LAYER = re.compile(r"^language_model\.(?:layers|blocks)\.(\d+)\.(.*)$")
_EXPERT = re.compile(r"^mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.(weight|weight_packed|weight_scale|weight_shape)$")
_STACKED = re.compile(r"^mlp\.experts\.(gate_up_proj|down_proj)$")
_MLP_GATE_UP = re.compile(r"^(mlp\.(?:shared_experts\.)?)(gate_proj|up_proj)\.weight$")
_GATE_UP_HALF = {"gate_proj": 0, "up_proj": 1}


def normalize_prefix(name: str) -> str | None:
    """Rewrite a checkpoint name to our module path, or return None for a name of no known layout."""
    for prefix, replacement in _PREFIXES:
        if name.startswith(prefix):
            return replacement + name[len(prefix):]
    return None


def resolve(name: str, num_hidden_layers: int) -> Target | None:
    """Return where checkpoint tensor `name` goes, or None if the name is not one we know."""
    path = normalize_prefix(name)
    if path is None:
        return None
    if path.startswith("language_model.rotary_emb."):
        return Target(TargetKind.IGNORED)
    match = _LAYER.match(path)
    if match is None:
        return Target(TargetKind.PARAM, path)

    layer, rest = int(match.group(1)), match.group(2)
    layer_path = f"language_model.layers.{layer}"
    # DeepSeek-V3 stores its multi-token-prediction module as extra layers past the last one.
    if layer >= num_hidden_layers:
        return Target(TargetKind.IGNORED)
    expert = _EXPERT.match(rest)
    if expert is not None:
        index, proj, suffix = int(expert.group(1)), expert.group(2), expert.group(3)
        param = f"{layer_path}.mlp.experts.{'down_proj' if proj == 'down_proj' else 'gate_up_proj'}"
        half = _GATE_UP_HALF.get(proj)
        if suffix == "weight":
            return Target(TargetKind.PARAM, param, index, half)
        return Target(TargetKind.INT4, param, index, half, int4_part=suffix)
    stacked = _STACKED.match(rest)
    if stacked is not None:
        return Target(TargetKind.PARAM, f"{layer_path}.mlp.experts.{stacked.group(1)}")
    mlp = _MLP_GATE_UP.match(rest)
    if mlp is not None:
        return Target(TargetKind.PARAM, f"{layer_path}.{mlp.group(1)}gate_up_proj.weight",
                      half=_GATE_UP_HALF[mlp.group(2)])
    return Target(TargetKind.PARAM, f"{layer_path}.{rest}")


def official_name(param: str) -> str:
    """Return the official Kimi K2.5 checkpoint name of a parameter path (not fused, not stacked)."""
    if param.startswith("language_model.lm_head."):
        return param
    if param.startswith("language_model."):
        return "language_model.model." + param[len("language_model."):]
    if param.startswith("vision_tower.blocks.") or param.startswith("vision_tower.final_layernorm."):
        return "vision_tower.encoder." + param[len("vision_tower."):]
    return param


def official_expert_name(param: str, expert: int, proj: str, part: str = "weight") -> str:
    """Official name of expert `expert`'s `proj` (gate_proj, up_proj, down_proj) of a stacked parameter.

    `part` is `weight` for an unquantized expert, or `weight_packed`, `weight_scale` or
    `weight_shape` for an INT4 one.
    """
    head = param.rsplit(".", 1)[0]
    return f"{official_name(head)}.{expert}.{proj}.{part}"
