"""Shared fixtures: tiny reference checkpoints written in the official layout."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from reference import (  # noqa: E402
    build_reference_kimi_k25_model,
    build_reference_text_model,
    text_config_dict,
    vision_config_dict,
    write_kimi_k25_checkpoint,
    write_text_checkpoint,
)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _deterministic_threads():
    # Two threads keep the suite fast on small CI machines and make fp32 reductions repeatable.
    torch.set_num_threads(2)
    yield


@pytest.fixture(scope="session")
def tokenizer_files(tmp_path_factory) -> Path:
    """Tokenizer files in the official format with the official special ids, built once."""
    from kimi_k25.tokenizer.build import write_tokenizer_files

    return write_tokenizer_files(tmp_path_factory.mktemp("tokenizer"))


def full_vocab_text_config(**overrides) -> dict:
    """A tiny text config with the real 163,840-id vocabulary, so the real tokenizer ids fit."""
    values = dict(vocab_size=163840, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
                  num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=2, q_lora_rank=24,
                  kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8, n_routed_experts=8,
                  num_experts_per_tok=2, n_group=2, topk_group=1, max_position_embeddings=512,
                  rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128,
                                "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0},
                  bos_token_id=163584, eos_token_id=163585, pad_token_id=163839)
    values.update(overrides)
    return text_config_dict(**values)


@pytest.fixture(scope="session")
def served_checkpoint(tmp_path_factory, tokenizer_files):
    """A complete checkpoint directory for the server, and the transformers model it was written from."""
    raw = full_vocab_text_config()
    reference = build_reference_text_model(raw, seed=7)
    out = tmp_path_factory.mktemp("served") / "tiny-kimi"
    write_text_checkpoint(reference, raw, out, layout="kimi_k25", num_shards=2)
    for name in ("tiktoken.model", "tokenizer_config.json"):
        shutil.copy(tokenizer_files / name, out / name)
    shutil.copy(REPO / "kimi_k25" / "chat" / "chat_template.jinja", out / "chat_template.jinja")
    return out, reference


@pytest.fixture(scope="session")
def served_vision_checkpoint(tmp_path_factory, tokenizer_files):
    """A multimodal checkpoint (vision tower, official media ids) for the server, and its reference model."""
    text_raw, vision_raw = full_vocab_text_config(), vision_config_dict()
    reference = build_reference_kimi_k25_model(text_raw, vision_raw, seed=9, image_token_id=163605)
    out = tmp_path_factory.mktemp("served-vision") / "tiny-kimi-vl"
    write_kimi_k25_checkpoint(reference, text_raw, vision_raw, out, num_shards=2)
    for name in ("tiktoken.model", "tokenizer_config.json"):
        shutil.copy(tokenizer_files / name, out / name)
    shutil.copy(REPO / "kimi_k25" / "chat" / "chat_template.jinja", out / "chat_template.jinja")
    return out, reference
