"""Config parsing, validation messages, and the published parameter counts."""

from __future__ import annotations

import json

import pytest

from kimi_k25.cli import main
from kimi_k25.model.config import ConfigError, KimiK25Config, TextConfig
from kimi_k25.model.params import count_parameters
from reference import text_config_dict

# Published figures for Kimi K2.5: 1.03T total (text + vision + projector) and 32.86B activated.
KIMI_K25_TOTAL = 1_026_879_376_368
KIMI_K25_ACTIVE = 32_861_500_928


def test_preset_matches_published_counts():
    counts = count_parameters(KimiK25Config.from_preset("kimi-k2.5"))
    assert counts["total_params"] == KIMI_K25_TOTAL
    assert counts["active_params"] == KIMI_K25_ACTIVE
    assert counts["vision_tower_params"] == 416_866_032
    assert counts["projector_params"] == 54_277_888


def test_info_cli_prints_counts_as_json(capsys):
    assert main(["info", "--preset", "kimi-k2.5", "--json"]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert counts["total_params"] == KIMI_K25_TOTAL
    assert counts["active_params"] == KIMI_K25_ACTIVE


def test_info_cli_reads_checkpoint_dir(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps(text_config_dict()))
    assert main(["info", str(tmp_path), "--json"]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert counts["vision_tower_params"] == 0
    assert counts["num_moe_layers"] == 3


def test_info_cli_rejects_bad_config(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps(text_config_dict(n_group=3)))
    assert main(["info", str(tmp_path)]) == 1
    assert "n_group" in capsys.readouterr().err


def test_preset_reads_official_spellings():
    config = KimiK25Config.from_preset("kimi-k2.5")
    assert config.text.rope_scaling.factor == 64.0
    assert config.text.softmax_scale == pytest.approx(0.1446796, abs=1e-7)
    assert config.vision.hidden_size == 1152
    assert config.vision.num_hidden_layers == 27
    assert config.text.quantization_config["format"] == "pack-quantized"
    assert config.media_placeholder_token_id == 163605
    assert not config.text.tie_word_embeddings


def test_transformers_spelling_equals_official():
    official = KimiK25Config.from_preset("kimi-k2.5")
    raw = official.to_dict()
    text = raw["text_config"]
    scaling = text.pop("rope_scaling")
    scaling.pop("type")
    text["rope_parameters"] = {"rope_type": "yarn", "rope_theta": text.pop("rope_theta"), **scaling}
    text["model_type"] = "deepseek_v3"
    vision = raw["vision_config"]
    raw["vision_config"] = {"hidden_size": vision["vt_hidden_size"], "intermediate_size": vision["vt_intermediate_size"],
                            "num_hidden_layers": vision["vt_num_hidden_layers"],
                            "num_attention_heads": vision["vt_num_attention_heads"], "pos_emb_height": 64,
                            "pos_emb_width": 64, "pos_emb_time": 4, "patch_size": 14}
    assert KimiK25Config.from_dict(raw) == official


def test_to_dict_round_trips():
    official = KimiK25Config.from_preset("kimi-k2.5")
    assert KimiK25Config.from_dict(json.loads(json.dumps(official.to_dict()))) == official


def test_text_only_kimi_k2_config():
    config = KimiK25Config.from_dict(text_config_dict(model_type="kimi_k2"))
    assert config.vision is None
    assert config.model_type == "kimi_k2"
    assert config.text.num_moe_layers == 3


@pytest.mark.parametrize(("overrides", "key"), [
    ({"num_key_value_heads": 2}, "num_key_value_heads"),
    ({"n_group": 3}, "n_group"),
    ({"topk_group": 5}, "topk_group"),
    ({"num_experts_per_tok": 17}, "num_experts_per_tok"),
    ({"n_group": 4, "topk_group": 1, "num_experts_per_tok": 5}, "num_experts_per_tok"),
    ({"scoring_func": "softmax"}, "scoring_func"),
    ({"topk_method": "greedy"}, "topk_method"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"qk_rope_head_dim": 7}, "qk_rope_head_dim"),
    ({"hidden_size": "64"}, "hidden_size"),
    ({"hidden_size": 0}, "hidden_size"),
    ({"first_k_dense_replace": 9}, "first_k_dense_replace"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_scaling.type"),
    ({"rope_scaling": {"type": "yarn", "original_max_position_embeddings": 512}}, "rope_scaling.factor"),
    ({"rope_scaling": {"type": "yarn", "factor": 0.5, "original_max_position_embeddings": 512}}, "rope_scaling.factor"),
    ({"eos_token_id": 10_000}, "eos_token_id"),
    ({"model_type": "llama"}, "model_type"),
])
def test_invalid_text_values_name_the_key(overrides, key):
    with pytest.raises(ConfigError) as info:
        KimiK25Config.from_dict(text_config_dict(**overrides))
    assert repr(key) in str(info.value) or key in str(info.value)


def test_missing_required_key_is_named():
    raw = text_config_dict()
    del raw["hidden_size"]
    with pytest.raises(ConfigError, match="hidden_size"):
        TextConfig.from_dict(raw)


@pytest.mark.parametrize(("vision", "key"), [
    ({"vt_num_attention_heads": 5}, "vt_num_attention_heads"),
    ({"merge_kernel_size": [3, 3]}, "merge_kernel_size"),
    ({"pos_emb_type": "learned"}, "pos_emb_type"),
    ({"text_hidden_size": 123}, "text_hidden_size"),
    ({"vt_hidden_size": "wide"}, "hidden_size"),
])
def test_invalid_vision_values_name_the_key(vision, key):
    raw = KimiK25Config.from_preset("kimi-k2.5").to_dict()
    raw["vision_config"].update(vision)
    with pytest.raises(ConfigError, match=key):
        KimiK25Config.from_dict(raw)


def test_missing_config_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="config"):
        KimiK25Config.from_file(tmp_path)


def test_unknown_preset_lists_available():
    with pytest.raises(ConfigError, match="kimi-k2.5"):
        KimiK25Config.from_preset("kimi-k9")
