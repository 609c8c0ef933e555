"""Numerical parity of the text decoder with transformers' DeepseekV3ForCausalLM, in fp32.

Each case writes a random transformers model in the official tensor layout, loads it with
kimi_k25, and compares the logits of a prefill and of 16 decode steps through the latent cache
(max error relative to the largest reference logit <= 1e-4), and the greedy token sequences.
"""

from __future__ import annotations

import pytest
import torch

from kimi_k25.checkpoint.loader import load_checkpoint
from kimi_k25.engine.sampling import SamplingParams
from kimi_k25.model.cache import AttentionBatch, LatentCache
from reference import build_reference_text_model, text_config_dict, write_text_checkpoint

TOLERANCE = 1e-4
DECODE_STEPS = 16

CASES = {
    # YaRN factor 8, 3 MoE layers, 4 groups of which 2 are kept, nonzero correction bias
    "grouped_routing": text_config_dict(),
    "single_group": text_config_dict(n_group=1, topk_group=1, num_experts_per_tok=6),
    "no_q_lora": text_config_dict(q_lora_rank=None, first_k_dense_replace=2, num_hidden_layers=5),
    "plain_rope": text_config_dict(rope_scaling=None, n_shared_experts=2),
    "yarn_mscale_differs": text_config_dict(rope_scaling={
        "type": "yarn", "factor": 32.0, "original_max_position_embeddings": 256, "beta_fast": 16.0,
        "beta_slow": 2.0, "mscale": 0.707, "mscale_all_dim": 1.0}),
}


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours - reference).abs().max() / reference.abs().max()).item()


def reference_greedy(model, prompt: list[int], steps: int) -> tuple[list[int], list[torch.Tensor]]:
    """Greedy decode with transformers' own cache; returns tokens and the logits of every step."""
    with torch.no_grad():
        out = model(torch.tensor([prompt]), use_cache=True)
        cache = out.cache
        logits = [out.logits[0, -1]]
        tokens = [int(logits[-1].argmax())]
        for _ in range(steps):
            out = model(torch.tensor([[tokens[-1]]]), cache=cache, use_cache=True)
            cache = out.cache
            logits.append(out.logits[0, -1])
            tokens.append(int(logits[-1].argmax()))
    return tokens, logits


def our_greedy(model, prompts: list[list[int]], steps: int) -> tuple[list[list[int]], list[list[torch.Tensor]]]:
    """Prefill all prompts in one packed step, then decode them together through the paged cache."""
    text = model.config.text
    block_size = 4
    blocks_per_seq = -(-(max(map(len, prompts)) + steps + 1) // block_size)
    cache = LatentCache(text.num_hidden_layers, blocks_per_seq * len(prompts), block_size, text.kv_cache_dim,
                        torch.float32)
    # Interleave the block ids of the sequences so no sequence owns a contiguous range.
    tables = [[b * len(prompts) + i for b in range(blocks_per_seq)] for i in range(len(prompts))]
    tokens = [[] for _ in prompts]
    logits = [[] for _ in prompts]
    lengths = [len(p) for p in prompts]
    with torch.no_grad():
        batch = AttentionBatch(list(lengths), list(lengths), tables, block_size)
        ids = torch.tensor([t for p in prompts for t in p])
        step_logits = model.compute_logits(model(ids, batch, cache)[batch.last_token_indices])
        for step in range(steps + 1):
            for i, row in enumerate(step_logits):
                logits[i].append(row)
                tokens[i].append(int(row.argmax()))
            if step == steps:
                break
            lengths = [n + 1 for n in lengths]
            batch = AttentionBatch([1] * len(prompts), list(lengths), tables, block_size)
            ids = torch.tensor([t[-1] for t in tokens])
            step_logits = model.compute_logits(model(ids, batch, cache))
    return tokens, logits


@pytest.mark.parametrize("case", sorted(CASES))
def test_prefill_and_decode_match_transformers(case, tmp_path):
    raw = CASES[case]
    reference = build_reference_text_model(raw, seed=1)
    ours = load_checkpoint(write_text_checkpoint(reference, raw, tmp_path), dtype=torch.float32, progress=False)

    generator = torch.Generator().manual_seed(2)
    prompts = [torch.randint(3, raw["vocab_size"], (n,), generator=generator).tolist() for n in (13, 5, 9)]
    our_tokens, our_logits = our_greedy(ours, prompts, DECODE_STEPS)
    for i, prompt in enumerate(prompts):
        ref_tokens, ref_logits = reference_greedy(reference, prompt, DECODE_STEPS)
        assert our_tokens[i] == ref_tokens, f"prompt {i}: greedy tokens differ"
        errors = [relative_error(o, r) for o, r in zip(our_logits[i], ref_logits)]
        assert len(errors) == DECODE_STEPS + 1
        assert max(errors) <= TOLERANCE, f"prompt {i}: per-step relative errors {errors}"


def test_full_prefill_logits_match_transformers(tmp_path):
    """Every position of a prefill, not only the last, matches the reference."""
    raw = CASES["grouped_routing"]
    reference = build_reference_text_model(raw, seed=3)
    ours = load_checkpoint(write_text_checkpoint(reference, raw, tmp_path), dtype=torch.float32, progress=False)
    ids = torch.randint(3, raw["vocab_size"], (21,), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = reference(ids[None]).logits[0]
        actual = ours.compute_logits(ours(ids, AttentionBatch.prefill([21])))
    assert actual.shape == expected.shape
    assert relative_error(actual, expected) <= TOLERANCE


def test_text_only_deepseek_layout_loads(tmp_path):
    raw = CASES["grouped_routing"]
    reference = build_reference_text_model(raw, seed=5)
    path = write_text_checkpoint(reference, raw, tmp_path, layout="deepseek_v3", num_shards=1)
    ours = load_checkpoint(path, dtype=torch.float32, progress=False)
    assert ours.vision_tower is None
    ids = torch.arange(3, 15)
    with torch.no_grad():
        expected = reference(ids[None]).logits[0]
        actual = ours.compute_logits(ours(ids, AttentionBatch.prefill([12])))
    assert relative_error(actual, expected) <= TOLERANCE


def test_engine_batch_matches_transformers_greedy(tmp_path):
    """The serving engine, batching prompts of different lengths, reproduces transformers' greedy tokens."""
    from kimi_k25.engine.llm_engine import EngineConfig, LLMEngine
    from kimi_k25.tokenizer.tokenizer import KimiTokenizer

    raw = text_config_dict(vocab_size=163840, hidden_size=32, eos_token_id=163585)
    reference = build_reference_text_model(raw, seed=6)
    ours = load_checkpoint(write_text_checkpoint(reference, raw, tmp_path / "ckpt"), dtype=torch.float32,
                           progress=False)
    from kimi_k25.tokenizer.build import write_tokenizer_files

    tokenizer = KimiTokenizer.from_dir(write_tokenizer_files(tmp_path / "tok"))
    engine = LLMEngine(ours, tokenizer, EngineConfig(num_blocks=64, block_size=8, max_num_seqs=4))
    generator = torch.Generator().manual_seed(7)
    prompts = [torch.randint(3, 160000, (n,), generator=generator).tolist() for n in (17, 4, 30, 9, 12)]
    outputs = engine.generate(prompts, SamplingParams(max_tokens=DECODE_STEPS, temperature=0.0, ignore_eos=True))
    for prompt, tokens in zip(prompts, outputs):
        expected, _ = reference_greedy(reference, prompt, DECODE_STEPS - 1)
        assert tokens == expected


def test_bf16_close_to_transformers_bf16(tmp_path):
    raw = CASES["grouped_routing"]
    reference = build_reference_text_model(raw, seed=8)
    ours = load_checkpoint(write_text_checkpoint(reference, raw, tmp_path), dtype=torch.bfloat16, progress=False)
    assert ours.language_model.layers[1].mlp.gate.weight.dtype == torch.float32
    assert ours.language_model.embed_tokens.weight.dtype == torch.bfloat16
    ids = torch.arange(3, 19)
    with torch.no_grad():
        expected = reference.to(torch.bfloat16)(ids[None]).logits[0].float()
        actual = ours.compute_logits(ours(ids, AttentionBatch.prefill([16])))
    assert actual.dtype == torch.float32
    # bf16 keeps ~3 significant digits; both sides round differently, so the bound is loose.
    assert relative_error(actual, expected) <= 0.05


@pytest.mark.parametrize("absorbed", [True, False], ids=["absorbed", "expanded"])
def test_both_attention_paths_match_transformers(absorbed, tmp_path, monkeypatch):
    """Force one MLA path for prefill and decode alike; each must match the reference on its own."""
    from kimi_k25.model.attention import MLAttention

    monkeypatch.setattr(MLAttention, "prefers_absorbed", lambda self, q, s: absorbed)
    raw = CASES["grouped_routing"]
    reference = build_reference_text_model(raw, seed=9)
    ours = load_checkpoint(write_text_checkpoint(reference, raw, tmp_path), dtype=torch.float32, progress=False)
    prompts = [list(range(10, 23)), list(range(40, 47))]
    our_tokens, our_logits = our_greedy(ours, prompts, DECODE_STEPS)
    for i, prompt in enumerate(prompts):
        ref_tokens, ref_logits = reference_greedy(reference, prompt, DECODE_STEPS)
        assert our_tokens[i] == ref_tokens
        assert max(relative_error(o, r) for o, r in zip(our_logits[i], ref_logits)) <= TOLERANCE


def test_path_choice_follows_cost():
    from kimi_k25.model.attention import MLAttention
    from kimi_k25.model.config import KimiK25Config

    with torch.device("meta"):
        attention = MLAttention(KimiK25Config.from_preset("kimi-k2.5").text, 0)
    assert attention.prefers_absorbed(1, 4096)  # decoding
    assert not attention.prefers_absorbed(4096, 4096)  # prefill
    assert attention.prefers_absorbed(8, 8192)  # a few queries over a long context


@pytest.mark.parametrize("num_tokens", [1, 8, 64])
def test_moe_dispatch_matches_transformers(num_tokens, tmp_path):
    """The sort-and-segment expert dispatch equals transformers' MoE layer for small and large batches."""
    raw = CASES["grouped_routing"]
    reference = build_reference_text_model(raw, seed=10)
    ours = load_checkpoint(write_text_checkpoint(reference, raw, tmp_path), dtype=torch.float32, progress=False)
    x = torch.randn(num_tokens, raw["hidden_size"], generator=torch.Generator().manual_seed(num_tokens))
    with torch.no_grad():
        for layer in range(raw["first_k_dense_replace"], raw["num_hidden_layers"]):
            expected = reference.model.layers[layer].mlp(x[None])[0]
            actual = ours.language_model.layers[layer].mlp(x)
            assert relative_error(actual, expected) <= TOLERANCE
