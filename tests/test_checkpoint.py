"""Checkpoint loading: layouts, name aliases, and the errors a wrong checkpoint produces."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import load_file, save_file

from kimi_k25.checkpoint.loader import CheckpointError, load_checkpoint
from kimi_k25.checkpoint.writer import save_checkpoint
from kimi_k25.model.cache import AttentionBatch
from kimi_k25.model.config import KimiK25Config
from kimi_k25.model.init import init_random_weights
from kimi_k25.model.kimi_k25 import KimiK25Model
from reference import (
    build_reference_kimi_k25_model,
    build_reference_text_model,
    text_config_dict,
    vision_config_dict,
    write_kimi_k25_checkpoint,
    write_text_checkpoint,
)


@pytest.fixture(scope="module")
def text_checkpoint(tmp_path_factory):
    raw = text_config_dict()
    reference = build_reference_text_model(raw, seed=11)
    path = write_text_checkpoint(reference, raw, tmp_path_factory.mktemp("text"), num_shards=1)
    return path, reference


def rewrite_weights(path, edit) -> None:
    """Apply `edit(dict)` to the tensors of a single-file checkpoint."""
    tensors = load_file(path / "model.safetensors")
    edit(tensors)
    save_file(tensors, path / "model.safetensors")


def copy_checkpoint(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_multimodal_checkpoint_loads_vision_and_text(tmp_path):
    text_raw, vision_raw = text_config_dict(), vision_config_dict()
    reference = build_reference_kimi_k25_model(text_raw, vision_raw, seed=12)
    path = write_kimi_k25_checkpoint(reference, text_raw, vision_raw, tmp_path)
    ours = load_checkpoint(path, dtype=torch.float32, progress=False)
    assert ours.has_vision
    ids = torch.arange(5, 25)
    with torch.no_grad():
        expected = reference(input_ids=ids[None]).logits[0]
        actual = ours.compute_logits(ours(ids, AttentionBatch.prefill([20])))
    assert ((actual - expected).abs().max() / expected.abs().max()).item() <= 1e-4


def test_text_only_loading_skips_vision_with_one_log_line(tmp_path, caplog):
    text_raw, vision_raw = text_config_dict(), vision_config_dict()
    reference = build_reference_kimi_k25_model(text_raw, vision_raw, seed=13)
    path = write_kimi_k25_checkpoint(reference, text_raw, vision_raw, tmp_path)
    with caplog.at_level(logging.INFO, logger="kimi_k25.checkpoint.loader"):
        ours = load_checkpoint(path, dtype=torch.float32, load_vision=False, progress=False)
    assert not ours.has_vision
    skipped = [r for r in caplog.records if "vision" in r.getMessage()]
    assert len(skipped) == 1


def test_transformers_save_pretrained_names_are_accepted(tmp_path):
    """The three names transformers writes differently from the official files still load."""
    text_raw, vision_raw = text_config_dict(), vision_config_dict()
    reference = build_reference_kimi_k25_model(text_raw, vision_raw, seed=14)
    path = write_kimi_k25_checkpoint(reference, text_raw, vision_raw, tmp_path / "official", num_shards=1)
    official = load_checkpoint(path, dtype=torch.float32, progress=False)

    def rename(tensors):
        for name in list(tensors):
            new = name.replace("language_model.model.layers.", "language_model.model.blocks.")
            new = new.replace("vision_tower.patch_embed.", "vision_tower.encoder.patch_embed.")
            new = new.replace("mm_projector.pre_norm.", "model.mm_projector.pre_norm.")
            tensors[new] = tensors.pop(name)

    rewrite_weights(path, rename)
    renamed = load_checkpoint(path, dtype=torch.float32, progress=False)
    for (name, a), (_, b) in zip(official.named_parameters(), renamed.named_parameters()):
        assert torch.equal(a, b), name


def test_missing_and_unexpected_tensors_are_listed(text_checkpoint, tmp_path):
    path = copy_checkpoint(text_checkpoint[0], tmp_path / "broken")

    def edit(tensors):
        del tensors["language_model.model.layers.2.self_attn.kv_b_proj.weight"]
        del tensors["language_model.model.layers.1.mlp.experts.3.up_proj.weight"]
        tensors["language_model.model.layers.0.mystery.weight"] = torch.zeros(2)

    rewrite_weights(path, edit)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, dtype=torch.float32, progress=False)
    message = str(info.value)
    assert "2 missing" in message
    assert "language_model.layers.2.self_attn.kv_b_proj.weight" in message
    assert "language_model.layers.1.mlp.experts.gate_up_proj[expert 3, up half]" in message
    assert "1 unexpected" in message
    assert "language_model.model.layers.0.mystery.weight" in message


def test_wrong_shape_is_reported_before_loading(text_checkpoint, tmp_path):
    path = copy_checkpoint(text_checkpoint[0], tmp_path / "shape")

    def edit(tensors):
        tensors["language_model.model.norm.weight"] = torch.ones(7)

    rewrite_weights(path, edit)
    with pytest.raises(CheckpointError, match=r"language_model.model.norm.weight: stored \[7\]"):
        load_checkpoint(path, dtype=torch.float32, progress=False)


def test_mixed_int4_and_bf16_experts_rejected(text_checkpoint, tmp_path):
    path = copy_checkpoint(text_checkpoint[0], tmp_path / "int4")

    def edit(tensors):
        name = "language_model.model.layers.1.mlp.experts.0.gate_proj"
        weight = tensors.pop(f"{name}.weight")
        tensors[f"{name}.weight_packed"] = torch.zeros(weight.shape[0], weight.shape[1] // 8, dtype=torch.int32)
        tensors[f"{name}.weight_scale"] = torch.ones(weight.shape[0], weight.shape[1] // 32)
        tensors[f"{name}.weight_shape"] = torch.tensor(list(weight.shape), dtype=torch.int32)

    rewrite_weights(path, edit)
    with pytest.raises(CheckpointError, match="INT4"):
        load_checkpoint(path, dtype=torch.float32, progress=False)


def test_mtp_layers_are_ignored(text_checkpoint, tmp_path, caplog):
    path = copy_checkpoint(text_checkpoint[0], tmp_path / "mtp")
    num_layers = text_config_dict()["num_hidden_layers"]

    def edit(tensors):
        tensors[f"language_model.model.layers.{num_layers}.eh_proj.weight"] = torch.zeros(4, 4)

    rewrite_weights(path, edit)
    with caplog.at_level(logging.INFO, logger="kimi_k25.checkpoint.loader"):
        load_checkpoint(path, dtype=torch.float32, progress=False)
    assert any("multi-token-prediction" in r.getMessage() for r in caplog.records)


def test_missing_index_shard_is_named(text_checkpoint, tmp_path):
    path = copy_checkpoint(text_checkpoint[0], tmp_path / "index")
    names = list(load_file(path / "model.safetensors"))
    (path / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {n: "model-00002-of-000002.safetensors" for n in names}}))
    with pytest.raises(CheckpointError, match="model-00002-of-000002.safetensors"):
        load_checkpoint(path, progress=False)


def test_no_weights_is_an_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(text_config_dict()))
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(tmp_path, progress=False)


@pytest.mark.parametrize("max_shard_bytes", [1 << 40, 200_000])
def test_writer_round_trip(tmp_path, max_shard_bytes):
    config = KimiK25Config.from_dict({"model_type": "kimi_k25", "text_config": text_config_dict(model_type="kimi_k2"),
                                      "vision_config": vision_config_dict(), "media_placeholder_token_id": 511})
    with torch.device("meta"):
        model = KimiK25Model(config)
    model.to_empty(device="cpu")
    init_random_weights(model, seed=3, bias_std=0.1)
    save_checkpoint(model, tmp_path, max_shard_bytes=max_shard_bytes)
    sharded = (tmp_path / "model.safetensors.index.json").exists()
    assert sharded == (max_shard_bytes < 1 << 40)
    loaded = load_checkpoint(tmp_path, dtype=torch.float32, progress=False)
    for (name, a), (_, b) in zip(model.named_parameters(), loaded.named_parameters()):
        assert torch.equal(a, b), name
