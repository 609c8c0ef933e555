"""Tiny random reference models from transformers, written in the official Kimi K2.5 tensor layout.

transformers' own `save_pretrained` writes three names that differ from the official files and
keeps experts stacked in memory, so test checkpoints are written from the in-memory state dict
through the table below instead.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

# Transformers keeps the vision q and k rows of each head permuted (evens first, then odds) so it
# can use rotate-half; the official `wqkv` stores them in interleaved pairs.

def unpermute_vision_rope_rows(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    head_dim = weight.shape[0] // num_heads
    half = head_dim // 2
    per_head = weight.reshape(num_heads, head_dim, *weight.shape[1:])
    restored = torch.empty_like(per_head)
    restored[:, 0::2] = per_head[:, :half]
    restored[:, 1::2] = per_head[:, half:]
    return restored.reshape(weight.shape)


def text_config_dict(**overrides) -> dict:
    """A tiny DeepSeek-V3 / Kimi K2 text config with every feature switched on."""
    config = {
        "model_type": "deepseek_v3",
        "vocab_size": 512,
        "hidden_size": 64,
        "intermediate_size": 96,
        "moe_intermediate_size": 32,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "q_lora_rank": 48,
        "kv_lora_rank": 32,
        "qk_nope_head_dim": 16,
        "qk_rope_head_dim": 8,
        "v_head_dim": 16,
        "n_routed_experts": 16,
        "n_shared_experts": 1,
        "num_experts_per_tok": 4,
        "n_group": 4,
        "topk_group": 2,
        "topk_method": "noaux_tc",
        "scoring_func": "sigmoid",
        "norm_topk_prob": True,
        "routed_scaling_factor": 2.827,
        "first_k_dense_replace": 1,
        "moe_layer_freq": 1,
        "max_position_embeddings": 4096,
        "rope_theta": 50000.0,
        "rope_scaling": {"type": "yarn", "factor": 8.0, "original_max_position_embeddings": 512,
                         "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0},
        "rms_norm_eps": 1e-5,
        "hidden_act": "silu",
        "attention_bias": False,
        "tie_word_embeddings": False,
        "num_nextn_predict_layers": 0,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "pad_token_id": 2,
    }
    config.update(overrides)
    return config


def _to_transformers_text_config(raw: dict):
    from transformers import DeepseekV3Config

    values = {k: v for k, v in raw.items() if k not in ("model_type", "rope_scaling", "rope_theta", "num_nextn_predict_layers")}
    rope = {"rope_type": "default", "rope_theta": raw["rope_theta"]}
    if raw.get("rope_scaling"):
        scaling = dict(raw["rope_scaling"])
        scaling.pop("type", None)
        rope = {"rope_type": "yarn", "rope_theta": raw["rope_theta"], **scaling}
    return DeepseekV3Config(**values, rope_parameters=rope, num_mtp_layers=0)


def randomize_router_bias(model: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for name, buffer in model.named_buffers():
        if name.endswith("e_score_correction_bias"):
            buffer.copy_(torch.randn(buffer.shape, generator=generator) * 0.5)


def build_reference_text_model(raw_config: dict, seed: int = 0):
    """Return a random transformers DeepseekV3ForCausalLM in fp32 with a nonzero correction bias."""
    from transformers import DeepseekV3ForCausalLM

    torch.manual_seed(seed)
    model = DeepseekV3ForCausalLM(_to_transformers_text_config(raw_config)).float().eval()
    with torch.no_grad():
        randomize_router_bias(model, seed)
    return model


def text_state_dict_official(state: dict[str, torch.Tensor], prefix: str, head: str) -> dict[str, torch.Tensor]:
    """Rename a transformers DeepseekV3 text state dict: `model.*` -> `{prefix}*`, experts split per expert."""
    out = {}
    for name, tensor in state.items():
        if name == "lm_head.weight":
            out[head] = tensor
            continue
        assert name.startswith("model."), name
        rest = name[len("model."):]
        if rest.endswith("mlp.experts.gate_up_proj"):
            base = prefix + rest[: -len("gate_up_proj")]
            inter = tensor.shape[1] // 2
            for e in range(tensor.shape[0]):
                out[f"{base}{e}.gate_proj.weight"] = tensor[e, :inter]
                out[f"{base}{e}.up_proj.weight"] = tensor[e, inter:]
        elif rest.endswith("mlp.experts.down_proj"):
            base = prefix + rest[: -len("down_proj")]
            for e in range(tensor.shape[0]):
                out[f"{base}{e}.down_proj.weight"] = tensor[e]
        else:
            out[prefix + rest] = tensor
    return {k: v.contiguous().clone() for k, v in out.items()}


def write_safetensors(tensors: dict[str, torch.Tensor], out_dir: Path, num_shards: int = 1) -> None:
    names = sorted(tensors)
    if num_shards == 1:
        save_file({n: tensors[n] for n in names}, out_dir / "model.safetensors")
        return
    weight_map = {}
    chunk = -(-len(names) // num_shards)
    for i in range(num_shards):
        file_name = f"model-{i + 1:05d}-of-{num_shards:06d}.safetensors"
        part = names[i * chunk:(i + 1) * chunk]
        save_file({n: tensors[n] for n in part}, out_dir / file_name)
        weight_map.update({n: file_name for n in part})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (out_dir / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))


def write_text_checkpoint(model, raw_config: dict, out_dir: Path, layout: str = "kimi_k25", num_shards: int = 2) -> Path:
    """Write a transformers text model as an official checkpoint.

    layout "kimi_k25": the multimodal file shape without a vision tower (`language_model.model.*`,
    config with `text_config` of model type kimi_k2); layout "deepseek_v3": a text-only file.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    if layout == "deepseek_v3":
        tensors = text_state_dict_official(state, "model.", "lm_head.weight")
        config = dict(raw_config, model_type="deepseek_v3", architectures=["DeepseekV3ForCausalLM"])
    else:
        tensors = text_state_dict_official(state, "language_model.model.", "language_model.lm_head.weight")
        text = dict(raw_config, model_type="kimi_k2")
        config = {"model_type": "kimi_k25", "architectures": ["KimiK25ForConditionalGeneration"],
                  "text_config": text, "media_placeholder_token_id": raw_config["vocab_size"] - 1}
    write_safetensors(tensors, out_dir, num_shards)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    return out_dir


def vision_config_dict(**overrides) -> dict:
    """A tiny MoonViT config in the official `vt_*` spelling."""
    config = {"vt_hidden_size": 32, "vt_intermediate_size": 48, "vt_num_hidden_layers": 2,
              "vt_num_attention_heads": 2, "patch_size": 14, "init_pos_emb_height": 8, "init_pos_emb_width": 8,
              "init_pos_emb_time": 4, "pos_emb_type": "divided_fixed", "merge_kernel_size": [2, 2],
              "merge_type": "sd2_tpool", "video_attn_type": "spatial_temporal", "mm_projector_type": "patchmerger",
              "projector_hidden_act": "gelu", "projector_ln_eps": 1e-5}
    config.update(overrides)
    return config


def build_reference_kimi_k25_model(text_raw: dict, vision_raw: dict, seed: int = 0, image_token_id: int | None = None):
    """Return a random transformers Kimi_K25ForConditionalGeneration in fp32 (untied lm_head)."""
    from transformers import Kimi_K25Config, Kimi_K25ForConditionalGeneration

    text = _to_transformers_text_config(text_raw).to_dict()
    vision = {"hidden_size": vision_raw["vt_hidden_size"], "intermediate_size": vision_raw["vt_intermediate_size"],
              "num_hidden_layers": vision_raw["vt_num_hidden_layers"],
              "num_attention_heads": vision_raw["vt_num_attention_heads"], "patch_size": vision_raw["patch_size"],
              "pos_emb_height": vision_raw["init_pos_emb_height"], "pos_emb_width": vision_raw["init_pos_emb_width"],
              "pos_emb_time": vision_raw["init_pos_emb_time"]}
    config = Kimi_K25Config(text_config=text, vision_config=vision, tie_word_embeddings=False,
                            projection_hidden_size=vision_raw["vt_hidden_size"],
                            image_token_id=text_raw["vocab_size"] - 1 if image_token_id is None else image_token_id)
    torch.manual_seed(seed)
    model = Kimi_K25ForConditionalGeneration(config).float().eval()
    with torch.no_grad():
        randomize_router_bias(model, seed)
        # The default init leaves LayerNorm weights at one and biases at zero; random values make
        # a swapped or missing norm visible in the comparison.
        generator = torch.Generator().manual_seed(seed + 1)
        for name, param in model.named_parameters():
            if "vision_tower" in name or "mm_projector" in name:
                if name.endswith("bias") or "norm" in name:
                    param.copy_(param + 0.1 * torch.randn(param.shape, generator=generator))
                elif "attn.q_proj" in name or "attn.k_proj" in name:
                    # Large query and key weights make attention peaky, so that positions (the 2-D
                    # rotary embedding) change the output well beyond the comparison tolerance.
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    return model


def kimi_k25_state_dict_official(model) -> dict[str, torch.Tensor]:
    """Rename a transformers Kimi_K25ForConditionalGeneration state dict to the official tensor names."""
    state = model.state_dict()
    num_heads = model.config.vision_config.num_attention_heads
    text_state = {"lm_head.weight": state["lm_head.weight"]}
    text_state.update({"model." + k[len("model.language_model."):]: v for k, v in state.items()
                       if k.startswith("model.language_model.")})
    out = text_state_dict_official(text_state, "language_model.model.", "language_model.lm_head.weight")

    vision = {k[len("model."):]: v for k, v in state.items() if k.startswith(("model.vision_tower.", "model.mm_projector."))}
    out.update(vision_state_dict_official(vision, num_heads))
    return {k: v.contiguous().clone() for k, v in out.items()}


def vision_state_dict_official(state: dict[str, torch.Tensor], num_heads: int) -> dict[str, torch.Tensor]:
    """Rename transformers' `vision_tower.*` and `mm_projector.*` tensors to the official names."""
    out = {}
    vision_renames = {"norm1": "norm0", "norm2": "norm1", "attn.proj": "wo", "mlp.fc1": "mlp.fc0", "mlp.fc2": "mlp.fc1"}
    layer_ids = sorted({int(k.split(".")[2]) for k in state if k.startswith("vision_tower.layers.")})
    for b in layer_ids:
        src = f"vision_tower.layers.{b}."
        dst = f"vision_tower.encoder.blocks.{b}."
        for kind in ("weight", "bias"):
            q = unpermute_vision_rope_rows(state[f"{src}attn.q_proj.{kind}"], num_heads)
            k = unpermute_vision_rope_rows(state[f"{src}attn.k_proj.{kind}"], num_heads)
            out[f"{dst}wqkv.{kind}"] = torch.cat([q, k, state[f"{src}attn.v_proj.{kind}"]])
            for old, new in vision_renames.items():
                out[f"{dst}{new}.{kind}"] = state[f"{src}{old}.{kind}"]
    out["vision_tower.patch_embed.proj.weight"] = state["vision_tower.patch_embed.proj.weight"]
    out["vision_tower.patch_embed.proj.bias"] = state["vision_tower.patch_embed.proj.bias"]
    out["vision_tower.patch_embed.pos_emb.weight"] = state["vision_tower.patch_embed.pos_emb.position_embeddings"]
    for kind in ("weight", "bias"):
        out[f"vision_tower.encoder.final_layernorm.{kind}"] = state[f"vision_tower.final_layernorm.{kind}"]
        out[f"mm_projector.pre_norm.{kind}"] = state[f"mm_projector.pre_norm.{kind}"]
        out[f"mm_projector.proj.0.{kind}"] = state[f"mm_projector.in_proj.{kind}"]
        out[f"mm_projector.proj.2.{kind}"] = state[f"mm_projector.out_proj.{kind}"]
    return out


def write_kimi_k25_checkpoint(model, text_raw: dict, vision_raw: dict, out_dir: Path, num_shards: int = 3) -> Path:
    """Write a transformers Kimi K2.5 model as an official multimodal checkpoint (same placeholder id)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_safetensors(kimi_k25_state_dict_official(model), out_dir, num_shards)
    config = {"model_type": "kimi_k25", "architectures": ["KimiK25ForConditionalGeneration"],
              "text_config": dict(text_raw, model_type="kimi_k2"), "vision_config": dict(vision_raw),
              "media_placeholder_token_id": model.config.image_token_id, "tie_word_embeddings": False}
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    return out_dir
