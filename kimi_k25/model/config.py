"""Typed model configs read from a checkpoint's config.json.

Three file shapes are accepted:

- the official Kimi K2.5 / K2.6 file: top-level `model_type: kimi_k25` with a `text_config` of
  model type `kimi_k2` (or `deepseek_v3`) and a `vision_config` spelled with the raw `vt_*` and
  `init_pos_emb_*` keys;
- the same model as transformers writes it (`rope_parameters` instead of `rope_scaling`, plain
  vision key names, `projection_layer_norm_eps` at the top level);
- a text-only `deepseek_v3` or `kimi_k2` file (Kimi K2, K2 Thinking, DeepSeek-V3).

Field names follow the checkpoint spellings so that a reader can grep between the two. Every
check raises `ConfigError` naming the offending key and, where one exists, the accepted range.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

TEXT_MODEL_TYPES = ("kimi_k2", "deepseek_v3")
MULTIMODAL_MODEL_TYPES = ("kimi_k25",)
PRESET_DIR = Path(__file__).parent / "presets"


class ConfigError(ValueError):
    """An invalid or inconsistent config.json value; the message names the key."""


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"config key {key!r}: {message}")


@dataclass(frozen=True)
class RopeScaling:
    """YaRN parameters as the `rope_scaling` block of the checkpoint spells them."""

    factor: float = 1.0
    original_max_position_embeddings: int = 4096
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float = 1.0
    mscale_all_dim: float = 0.0


@dataclass(frozen=True)
class TextConfig:
    """The DeepSeek-V3-style decoder: MLA attention, sigmoid-routed MoE, YaRN RoPE."""

    vocab_size: int = 163840
    hidden_size: int = 7168
    intermediate_size: int = 18432
    moe_intermediate_size: int = 2048
    num_hidden_layers: int = 61
    num_attention_heads: int = 64
    num_key_value_heads: int = 64
    # mla
    q_lora_rank: int | None = 1536
    kv_lora_rank: int = 512
    qk_nope_head_dim: int = 128
    qk_rope_head_dim: int = 64
    v_head_dim: int = 128
    # moe
    n_routed_experts: int = 384
    n_shared_experts: int = 1
    num_experts_per_tok: int = 8
    n_group: int = 1
    topk_group: int = 1
    topk_method: str = "noaux_tc"
    scoring_func: str = "sigmoid"
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 2.827
    first_k_dense_replace: int = 1
    moe_layer_freq: int = 1
    # positions and norms
    max_position_embeddings: int = 262144
    rope_theta: float = 50000.0
    rope_scaling: RopeScaling | None = None
    rms_norm_eps: float = 1e-5
    hidden_act: str = "silu"
    attention_bias: bool = False
    tie_word_embeddings: bool = False
    # special ids
    bos_token_id: int | None = 163584
    eos_token_id: tuple[int, ...] = (163585,)
    pad_token_id: int | None = 163839
    num_nextn_predict_layers: int = 0
    quantization_config: dict | None = None

    def __post_init__(self) -> None:
        for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                    "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
                    "max_position_embeddings"):
            value = getattr(self, key)
            _require(isinstance(value, int) and value > 0, key, f"must be a positive integer, got {value!r}")
        _require(self.q_lora_rank is None or self.q_lora_rank > 0, "q_lora_rank",
                 f"must be a positive integer or null, got {self.q_lora_rank!r}")
        _require(self.num_key_value_heads == self.num_attention_heads, "num_key_value_heads",
                 f"MLA shares one latent across heads, so it must equal num_attention_heads "
                 f"({self.num_attention_heads}), got {self.num_key_value_heads}")
        _require(self.qk_rope_head_dim % 2 == 0, "qk_rope_head_dim",
                 f"must be even (rotary dims rotate in pairs), got {self.qk_rope_head_dim}")

        _require(self.hidden_act == "silu", "hidden_act", f"only 'silu' is supported, got {self.hidden_act!r}")
        _require(not self.attention_bias, "attention_bias", "bias tensors in attention are not supported")
        _require(self.rms_norm_eps > 0, "rms_norm_eps", f"must be positive, got {self.rms_norm_eps}")
        _require(self.rope_theta > 0, "rope_theta", f"must be positive, got {self.rope_theta}")
        _require(0 <= self.first_k_dense_replace <= self.num_hidden_layers, "first_k_dense_replace",
                 f"must lie in [0, num_hidden_layers={self.num_hidden_layers}], got {self.first_k_dense_replace}")
        _require(self.moe_layer_freq >= 1, "moe_layer_freq", f"must be >= 1, got {self.moe_layer_freq}")
        if self.first_k_dense_replace > 0:
            _require(self.intermediate_size > 0, "intermediate_size",
                     f"dense layers need a positive size, got {self.intermediate_size}")

        if self.num_moe_layers:
            self._check_moe()
        if self.rope_scaling is not None:
            scaling = self.rope_scaling
            _require(scaling.factor >= 1.0, "rope_scaling.factor", f"must be >= 1, got {scaling.factor}")
            _require(scaling.original_max_position_embeddings > 0, "rope_scaling.original_max_position_embeddings",
                     f"must be positive, got {scaling.original_max_position_embeddings}")
            _require(scaling.beta_fast > scaling.beta_slow > 0, "rope_scaling.beta_fast",
                     f"YaRN needs beta_fast > beta_slow > 0, got {scaling.beta_fast} and {scaling.beta_slow}")
        for token_id in self.eos_token_id:
            _require(0 <= token_id < self.vocab_size, "eos_token_id",
                     f"{token_id} is outside the vocabulary of {self.vocab_size}")

    def _check_moe(self) -> None:
        _require(self.n_routed_experts >= 1, "n_routed_experts", f"must be >= 1, got {self.n_routed_experts}")
        _require(self.moe_intermediate_size > 0, "moe_intermediate_size",
                 f"must be positive, got {self.moe_intermediate_size}")
        _require(self.n_shared_experts >= 0, "n_shared_experts", f"must be >= 0, got {self.n_shared_experts}")
        _require(1 <= self.num_experts_per_tok <= self.n_routed_experts, "num_experts_per_tok",
                 f"must lie in [1, n_routed_experts={self.n_routed_experts}], got {self.num_experts_per_tok}")
        _require(self.scoring_func == "sigmoid", "scoring_func",
                 f"only 'sigmoid' (Kimi K2 / DeepSeek-V3) is supported, got {self.scoring_func!r}")
        _require(self.topk_method == "noaux_tc", "topk_method",
                 f"only 'noaux_tc' is supported, got {self.topk_method!r}")
        _require(self.n_group >= 1 and self.n_routed_experts % self.n_group == 0, "n_group",
                 f"must divide n_routed_experts={self.n_routed_experts}, got {self.n_group}")
        _require(1 <= self.topk_group <= self.n_group, "topk_group",
                 f"must lie in [1, n_group={self.n_group}], got {self.topk_group}")
        experts_per_group = self.n_routed_experts // self.n_group
        # Group scores sum each group's two best experts, so a group needs at least two.
        _require(experts_per_group >= 2, "n_group",
                 f"each group needs at least 2 experts, got {experts_per_group}")
        _require(self.num_experts_per_tok <= self.topk_group * experts_per_group, "num_experts_per_tok",
                 f"cannot pick {self.num_experts_per_tok} experts from {self.topk_group} groups "
                 f"of {experts_per_group}")

    # ----- derived sizes -------------------------------------------------------------------------

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def kv_cache_dim(self) -> int:
        """Values cached per token and layer: the normalised latent plus the shared rotary key."""
        return self.kv_lora_rank + self.qk_rope_head_dim

    def is_moe_layer(self, layer_idx: int) -> bool:
        """Return whether decoder layer `layer_idx` uses routed experts (the DeepSeek rule)."""
        return (self.n_routed_experts > 0 and layer_idx >= self.first_k_dense_replace
                and layer_idx % self.moe_layer_freq == 0)

    @property
    def num_moe_layers(self) -> int:
        return sum(self.is_moe_layer(i) for i in range(self.num_hidden_layers))

    @property
    def softmax_scale(self) -> float:
        """Scale of q·k: 1/sqrt(qk_head_dim), times YaRN's mscale(factor, mscale_all_dim) squared.

        The squared mscale multiplies the whole 192-dim product, nope dims included; DeepSeek-V3
        and transformers both apply it.
        """
        scale = self.qk_head_dim ** -0.5
        if self.rope_scaling is not None and self.rope_scaling.mscale_all_dim:
            mscale = yarn_mscale(self.rope_scaling.factor, self.rope_scaling.mscale_all_dim)
            scale *= mscale * mscale
        return scale

    def to_dict(self, model_type: str = "kimi_k2") -> dict[str, Any]:
        """Return the official config.json spelling of this text config (raw `rope_scaling`)."""
        raw: dict[str, Any] = {"model_type": model_type, "architectures": ["DeepseekV3ForCausalLM"]}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "rope_scaling":
                value = None if value is None else {"type": "yarn", **{k.name: getattr(value, k.name) for k in fields(value)}}
            elif f.name == "eos_token_id":
                value = value[0] if len(value) == 1 else list(value)
            if f.name == "quantization_config" and value is None:
                continue
            raw[f.name] = value
        return raw

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TextConfig:
        """Build from a text config dict in the official or the transformers spelling."""
        model_type = raw.get("model_type", "deepseek_v3")
        _require(model_type in TEXT_MODEL_TYPES, "text_config.model_type",
                 f"expected one of {TEXT_MODEL_TYPES}, got {model_type!r}")
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in raw.items() if k in known}
        rope_theta, rope_scaling = _parse_rope(raw)
        values["rope_theta"] = rope_theta
        values["rope_scaling"] = rope_scaling
        eos = raw.get("eos_token_id", 163585)
        values["eos_token_id"] = tuple(eos) if isinstance(eos, (list, tuple)) else ((eos,) if eos is not None else ())
        if values.get("num_key_value_heads") is None:
            values["num_key_value_heads"] = values.get("num_attention_heads", cls.num_attention_heads)
        if values.get("n_group") is None:
            values["n_group"] = 1
        if values.get("topk_group") is None:
            values["topk_group"] = 1
        if values.get("n_routed_experts") is None:
            values["n_routed_experts"] = 0
        values.setdefault("num_nextn_predict_layers", raw.get("num_mtp_layers", 0))
        for key in ("vocab_size", "hidden_size", "num_hidden_layers"):
            _require(key in raw, key, "is missing")
        _check_types(cls, values, prefix="")
        return cls(**values)


@dataclass(frozen=True)
class VisionConfig:
    """MoonViT-3D vision tower and the patch-merger projector into the text model."""

    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_hidden_layers: int = 27
    num_attention_heads: int = 16
    patch_size: int = 14
    init_pos_emb_height: int = 64
    init_pos_emb_width: int = 64
    init_pos_emb_time: int = 4
    pos_emb_type: str = "divided_fixed"
    merge_kernel_size: tuple[int, int] = (2, 2)
    merge_type: str = "sd2_tpool"
    video_attn_type: str = "spatial_temporal"
    mm_projector_type: str = "patchmerger"
    text_hidden_size: int = 7168
    projector_hidden_act: str = "gelu"
    projector_ln_eps: float = 1e-5

    def __post_init__(self) -> None:
        for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "patch_size", "init_pos_emb_height", "init_pos_emb_width", "init_pos_emb_time",
                    "text_hidden_size"):
            value = getattr(self, key)
            _require(isinstance(value, int) and value > 0, f"vision_config.{key}",
                     f"must be a positive integer, got {value!r}")
        _require(self.hidden_size % self.num_attention_heads == 0, "vision_config.vt_num_attention_heads",
                 f"must divide vt_hidden_size={self.hidden_size}, got {self.num_attention_heads}")
        # The 2-D rotary embedding splits each head into (width, height) pairs of complex numbers.
        _require(self.head_dim % 4 == 0, "vision_config.vt_hidden_size",
                 f"head size {self.head_dim} must be divisible by 4 for the 2-D rotary embedding")
        _require(self.pos_emb_type == "divided_fixed", "vision_config.pos_emb_type",
                 f"only 'divided_fixed' is supported, got {self.pos_emb_type!r}")
        _require(tuple(self.merge_kernel_size) == (2, 2), "vision_config.merge_kernel_size",
                 f"only [2, 2] is supported, got {list(self.merge_kernel_size)}")
        _require(self.merge_type == "sd2_tpool", "vision_config.merge_type",
                 f"only 'sd2_tpool' is supported, got {self.merge_type!r}")
        _require(self.mm_projector_type == "patchmerger", "vision_config.mm_projector_type",
                 f"only 'patchmerger' is supported, got {self.mm_projector_type!r}")
        _require(self.projector_hidden_act == "gelu", "vision_config.projector_hidden_act",
                 f"only 'gelu' is supported, got {self.projector_hidden_act!r}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def merged_hidden_size(self) -> int:
        """Width of one merged token: the 2×2 sub-patches concatenated."""
        return self.hidden_size * self.merge_kernel_size[0] * self.merge_kernel_size[1]

    def to_dict(self) -> dict[str, Any]:
        """Return the official `vision_config` spelling (`vt_*` and `init_pos_emb_*` keys)."""
        renamed = {"hidden_size": "vt_hidden_size", "intermediate_size": "vt_intermediate_size",
                   "num_hidden_layers": "vt_num_hidden_layers", "num_attention_heads": "vt_num_attention_heads"}
        raw = {renamed.get(f.name, f.name): getattr(self, f.name) for f in fields(self)}
        raw["merge_kernel_size"] = list(self.merge_kernel_size)
        raw["mm_hidden_size"] = self.hidden_size
        return raw

    @classmethod
    def from_dict(cls, raw: dict[str, Any], text_hidden_size: int, projector_ln_eps: float | None) -> VisionConfig:
        """Build from the raw `vt_*` spelling or from transformers' plain key names."""
        aliases = {
            "hidden_size": ("vt_hidden_size", "hidden_size"),
            "intermediate_size": ("vt_intermediate_size", "intermediate_size"),
            "num_hidden_layers": ("vt_num_hidden_layers", "num_hidden_layers"),
            "num_attention_heads": ("vt_num_attention_heads", "num_attention_heads"),
            "init_pos_emb_height": ("init_pos_emb_height", "pos_emb_height"),
            "init_pos_emb_width": ("init_pos_emb_width", "pos_emb_width"),
            "init_pos_emb_time": ("init_pos_emb_time", "pos_emb_time"),
        }
        values: dict[str, Any] = {}
        for name, keys in aliases.items():
            for key in keys:
                if key in raw:
                    values[name] = raw[key]
                    break
        for name in ("patch_size", "pos_emb_type", "merge_type", "video_attn_type", "mm_projector_type",
                     "projector_hidden_act", "projector_ln_eps"):
            if name in raw:
                values[name] = raw[name]
        if "merge_kernel_size" in raw:
            values["merge_kernel_size"] = tuple(raw["merge_kernel_size"])
        if "projector_ln_eps" not in values and projector_ln_eps is not None:
            values["projector_ln_eps"] = projector_ln_eps
        values["text_hidden_size"] = raw.get("text_hidden_size", text_hidden_size)
        _require(values["text_hidden_size"] == text_hidden_size, "vision_config.text_hidden_size",
                 f"must equal text_config.hidden_size={text_hidden_size}, got {values['text_hidden_size']}")
        _check_types(cls, values, prefix="vision_config.")
        return cls(**values)


@dataclass(frozen=True)
class KimiK25Config:
    """The whole model: text decoder, optional vision tower and projector, and media token ids."""

    text: TextConfig = field(default_factory=TextConfig)
    vision: VisionConfig | None = field(default_factory=VisionConfig)
    model_type: str = "kimi_k25"
    media_placeholder_token_id: int = 163605
    video_placeholder: str = "<|kimi_k25_video_placeholder|>"
    use_unified_vision_chunk: bool = True

    @property
    def quantization_config(self) -> dict | None:
        return self.text.quantization_config

    def to_dict(self) -> dict[str, Any]:
        """Return config.json in the official layout (text-only checkpoints as a flat text config)."""
        if self.model_type in TEXT_MODEL_TYPES:
            return self.text.to_dict(model_type=self.model_type)
        text = self.text.to_dict()
        raw: dict[str, Any] = {
            "architectures": ["KimiK25ForConditionalGeneration"],
            "model_type": self.model_type,
            "bos_token_id": self.text.bos_token_id,
            "eos_token_id": text["eos_token_id"],
            "pad_token_id": self.text.pad_token_id,
            "media_placeholder_token_id": self.media_placeholder_token_id,
            "tie_word_embeddings": self.text.tie_word_embeddings,
            "use_unified_vision_chunk": self.use_unified_vision_chunk,
            "video_placeholder": self.video_placeholder,
            "text_config": text,
        }
        if self.vision is not None:
            raw["vision_config"] = self.vision.to_dict()
        return raw

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> KimiK25Config:
        """Build from a parsed config.json of any supported shape."""
        if not isinstance(raw, dict):
            raise ConfigError(f"config.json must hold a JSON object, got {type(raw).__name__}")
        model_type = raw.get("model_type")
        if model_type in TEXT_MODEL_TYPES:
            return cls(text=TextConfig.from_dict(raw), vision=None, model_type=model_type)
        _require(model_type in MULTIMODAL_MODEL_TYPES, "model_type",
                 f"expected one of {MULTIMODAL_MODEL_TYPES + TEXT_MODEL_TYPES}, got {model_type!r}")
        _require(isinstance(raw.get("text_config"), dict), "text_config", "is missing or not an object")
        text_raw = dict(raw["text_config"])
        # The remote config class copies quantization_config up to the top level; either place counts.
        if "quantization_config" not in text_raw and "quantization_config" in raw:
            text_raw["quantization_config"] = raw["quantization_config"]
        for key in ("bos_token_id", "eos_token_id", "pad_token_id", "tie_word_embeddings"):
            if key in raw and key not in text_raw:
                text_raw[key] = raw[key]
        text = TextConfig.from_dict(text_raw)

        vision = None
        if raw.get("vision_config") is not None:
            _require(isinstance(raw["vision_config"], dict), "vision_config", "must be an object")
            vision = VisionConfig.from_dict(raw["vision_config"], text.hidden_size, raw.get("projection_layer_norm_eps"))
        placeholder = raw.get("media_placeholder_token_id", raw.get("image_token_id", 163605))
        _require(isinstance(placeholder, int) and 0 <= placeholder < text.vocab_size, "media_placeholder_token_id",
                 f"must be a token id below vocab_size={text.vocab_size}, got {placeholder!r}")
        return cls(
            text=text,
            vision=vision,
            model_type=model_type,
            media_placeholder_token_id=placeholder,
            video_placeholder=raw.get("video_placeholder", cls.video_placeholder),
            use_unified_vision_chunk=raw.get("use_unified_vision_chunk", True),
        )

    @classmethod
    def from_file(cls, path: str | Path) -> KimiK25Config:
        """Read `config.json` from a file or from a checkpoint directory."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path} is not valid JSON: {error}") from error
        return cls.from_dict(raw)

    @classmethod
    def from_preset(cls, name: str) -> KimiK25Config:
        """Load a named preset shipped with the package, e.g. 'kimi-k2.5'."""
        path = PRESET_DIR / f"{name}.json"
        if not path.is_file():
            raise ConfigError(f"unknown preset {name!r}; available presets: {', '.join(list_presets())}")
        return cls.from_file(path)


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def yarn_mscale(factor: float, mscale: float) -> float:
    """YaRN's attention temperature correction 0.1·m·ln(s) + 1, equal to 1 for s <= 1."""
    if factor <= 1.0:
        return 1.0
    return 0.1 * mscale * math.log(factor) + 1.0


def _parse_rope(raw: dict[str, Any]) -> tuple[float, RopeScaling | None]:
    """Read RoPE settings from the raw `rope_scaling` block or transformers' `rope_parameters`."""
    block = raw.get("rope_scaling")
    key = "rope_scaling"
    if block is None and isinstance(raw.get("rope_parameters"), dict):
        block, key = raw["rope_parameters"], "rope_parameters"
    rope_theta = raw.get("rope_theta")
    if rope_theta is None and isinstance(block, dict):
        rope_theta = block.get("rope_theta")
    rope_theta = float(rope_theta if rope_theta is not None else 10000.0)
    if block is None:
        return rope_theta, None
    _require(isinstance(block, dict), key, "must be an object or null")

    rope_type = block.get("type", block.get("rope_type", "default"))
    if rope_type == "default":
        return rope_theta, None
    _require(rope_type == "yarn", f"{key}.type", f"only 'yarn' is supported, got {rope_type!r}")
    _require("factor" in block, f"{key}.factor", "is missing")
    _require("original_max_position_embeddings" in block, f"{key}.original_max_position_embeddings", "is missing")
    try:
        scaling = RopeScaling(
            factor=float(block["factor"]),
            original_max_position_embeddings=int(block["original_max_position_embeddings"]),
            beta_fast=float(block.get("beta_fast") or 32.0),
            beta_slow=float(block.get("beta_slow") or 1.0),
            mscale=float(block.get("mscale") or 0.0),
            mscale_all_dim=float(block.get("mscale_all_dim") or 0.0),
        )
    except (TypeError, ValueError) as error:
        raise ConfigError(f"config key {key!r}: values must be numbers ({error})") from error
    return rope_theta, scaling


def _check_types(cls: type, values: dict[str, Any], prefix: str) -> None:
    """Reject values whose JSON type cannot be the field's type (a string for an int, and so on)."""
    expected = {f.name: f.type for f in fields(cls)}
    for name, value in values.items():
        kind = expected.get(name)
        if value is None or kind is None:
            continue
        if kind.startswith("int") and (not isinstance(value, int) or isinstance(value, bool)):
            raise ConfigError(f"config key {prefix + name!r}: expected an integer, got {value!r}")
        if kind.startswith("float") and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            raise ConfigError(f"config key {prefix + name!r}: expected a number, got {value!r}")
        if kind.startswith("bool") and not isinstance(value, bool):
            raise ConfigError(f"config key {prefix + name!r}: expected true or false, got {value!r}")
        if kind.startswith("str") and not isinstance(value, str):
            raise ConfigError(f"config key {prefix + name!r}: expected a string, got {value!r}")
