"""Build the small random Kimi K2.5-format checkpoint bundled as the server's default model.

It has the real vocabulary (163,840 ids with the official special-token ids), the official
config.json layout, tensor names and tokenizer files, and a tiny random text decoder and vision
tower, so `kimi-k25 serve` works offline on a fresh machine. Its output is random text.

    python scripts/build_default_model.py [OUT_DIR]   # default: kimi_k25/default_model
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch

from kimi_k25.checkpoint.writer import save_checkpoint
from kimi_k25.model.config import KimiK25Config, RopeScaling, TextConfig, VisionConfig
from kimi_k25.model.init import init_random_weights
from kimi_k25.model.kimi_k25 import KimiK25Model
from kimi_k25.tokenizer.build import write_tokenizer_files

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "kimi_k25" / "default_model"
SEED = 0

TEXT = TextConfig(
    vocab_size=163840, hidden_size=32, intermediate_size=64, moe_intermediate_size=32,
    num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4,
    q_lora_rank=32, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
    n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2, n_group=2, topk_group=1,
    first_k_dense_replace=1, max_position_embeddings=32768, rope_theta=50000.0,
    rope_scaling=RopeScaling(factor=8.0, original_max_position_embeddings=4096, mscale=1.0, mscale_all_dim=1.0),
)
VISION = VisionConfig(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    init_pos_emb_height=16, init_pos_emb_width=16, text_hidden_size=TEXT.hidden_size,
)

README = """\
# kimi-k25 default model

A tiny checkpoint with random weights, built by `scripts/build_default_model.py` (seed {seed}).
It is NOT a trained model: it writes random tokens. It exists so that `make serve` works
offline on a fresh machine and so that every layer of the serving stack can be exercised.

What is real about it: the Kimi K2.5 config.json layout (model_type kimi_k25, text_config of
type kimi_k2 with YaRN rope_scaling, vision_config with vt_* keys), the official tensor names,
the full 163,840-id vocabulary with the official special-token ids, the tokenizer file format
(tiktoken.model + tokenizer_config.json) and the chat template rules. The BPE merges are learned
from a small corpus shipped with the package, and the rest of the 163,584 BPE ranks are filler
tokens, so text encodes into far more tokens than with the real tokenizer.

Sizes: {layers} decoder layers (1 dense, {moe} MoE with {experts} experts, {topk} per token,
1 shared), hidden size {hidden}, MLA with kv_lora_rank {kv_lora}, a {vlayers}-layer vision
tower of width {vhidden}; {total:,} parameters in bfloat16.
"""


def build(out_dir: Path) -> Path:
    if out_dir.exists():
        shutil.rmtree(out_dir)
    config = KimiK25Config(text=TEXT, vision=VISION, media_placeholder_token_id=163605)
    torch.manual_seed(SEED)
    with torch.device("meta"):
        model = KimiK25Model(config)
    model.to_empty(device="cpu")
    init_random_weights(model, seed=SEED, std=0.02, bias_std=0.01)
    save_checkpoint(model, out_dir, dtype=torch.bfloat16)
    write_tokenizer_files(out_dir)
    shutil.copy(REPO / "kimi_k25" / "chat" / "chat_template.jinja", out_dir / "chat_template.jinja")
    for path in out_dir.iterdir():
        path.chmod(0o644)  # safetensors creates files readable by the owner only
    total = sum(p.numel() for p in model.parameters())
    (out_dir / "README.md").write_text(README.format(
        seed=SEED, layers=TEXT.num_hidden_layers, moe=TEXT.num_moe_layers, experts=TEXT.n_routed_experts,
        topk=TEXT.num_experts_per_tok, hidden=TEXT.hidden_size, kv_lora=TEXT.kv_lora_rank,
        vlayers=VISION.num_hidden_layers, vhidden=VISION.hidden_size, total=total))
    return out_dir


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", nargs="?", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    out = build(args.out_dir)
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"wrote {out} ({size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
