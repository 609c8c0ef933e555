"""The engine: batching, stop conditions, seeds, preemption and aborts on a tiny random model."""

from __future__ import annotations

import pytest
import torch

from kimi_k25.engine.llm_engine import EngineConfig, LLMEngine, PromptTooLongError
from kimi_k25.engine.sampling import SamplingParams, apply_penalties, sample_token
from kimi_k25.model.config import KimiK25Config
from kimi_k25.model.init import init_random_weights
from kimi_k25.model.kimi_k25 import KimiK25Model
from kimi_k25.tokenizer.tokenizer import KimiTokenizer
from conftest import full_vocab_text_config

GREEDY = dict(temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def model() -> KimiK25Model:
    config = KimiK25Config.from_dict(full_vocab_text_config(hidden_size=16, num_hidden_layers=2))
    with torch.device("meta"):
        model = KimiK25Model(config)
    model.to_empty(device="cpu")
    # A large init spreads the logits so that greedy choices are not near ties.
    return init_random_weights(model, seed=5, std=0.5, bias_std=0.1).eval()


@pytest.fixture(scope="module")
def tokenizer(tokenizer_files) -> KimiTokenizer:
    return KimiTokenizer.from_dir(tokenizer_files)


def make_engine(model, tokenizer, **overrides) -> LLMEngine:
    config = dict(num_blocks=256, block_size=4, max_num_seqs=8)
    config.update(overrides)
    return LLMEngine(model, tokenizer, EngineConfig(**config))


def run(engine: LLMEngine, prompts: dict[str, list[int]], params: SamplingParams):
    for request_id, prompt in prompts.items():
        engine.add_request(request_id, prompt, params)
    results = {request_id: {"tokens": [], "text": "", "reason": None} for request_id in prompts}
    while engine.has_unfinished_requests():
        for output in engine.step():
            entry = results[output.request_id]
            entry["tokens"] += output.token_ids
            entry["text"] += output.text
            if output.finished:
                entry["reason"] = output.finish_reason
    return results


PROMPTS = {f"r{i}": list(range(100 + 7 * i, 100 + 7 * i + n)) for i, n in enumerate((3, 11, 6, 20, 1))}


def test_batched_equals_alone(model, tokenizer):
    params = SamplingParams(max_tokens=12, **GREEDY)
    together = run(make_engine(model, tokenizer), PROMPTS, params)
    for request_id, prompt in PROMPTS.items():
        alone = run(make_engine(model, tokenizer), {request_id: prompt}, params)
        assert together[request_id]["tokens"] == alone[request_id]["tokens"]
        assert together[request_id]["text"] == alone[request_id]["text"]


def test_preemption_gives_same_tokens(model, tokenizer):
    params = SamplingParams(max_tokens=16, **GREEDY)
    reference = run(make_engine(model, tokenizer), PROMPTS, params)
    # 14 blocks of 4 tokens cannot hold all five sequences at full length at once.
    tight = make_engine(model, tokenizer, num_blocks=14)
    squeezed = run(tight, PROMPTS, params)
    assert tight.scheduler.num_preemptions > 0
    for request_id in PROMPTS:
        assert squeezed[request_id]["tokens"] == reference[request_id]["tokens"]
    assert tight.block_manager.num_free_blocks == 14


def test_max_tokens_and_length_reason(model, tokenizer):
    result = run(make_engine(model, tokenizer), {"a": [5, 6, 7]}, SamplingParams(max_tokens=5, **GREEDY))
    assert len(result["a"]["tokens"]) == 5
    assert result["a"]["reason"] == "length"


def test_stop_token_ends_without_text(model, tokenizer):
    free = run(make_engine(model, tokenizer), {"a": [9, 8, 7]}, SamplingParams(max_tokens=8, **GREEDY))["a"]
    stop_id = free["tokens"][3]
    stopped = run(make_engine(model, tokenizer), {"a": [9, 8, 7]},
                  SamplingParams(max_tokens=8, stop_token_ids=[stop_id], **GREEDY))["a"]
    assert stopped["tokens"] == free["tokens"][:free["tokens"].index(stop_id) + 1]
    assert stopped["reason"] == "stop"
    assert stopped["text"] == tokenizer.decode(stopped["tokens"][:-1], skip_special_tokens=True)


def test_stop_string_across_tokens(model, tokenizer):
    free = run(make_engine(model, tokenizer), {"a": [1, 2, 3]}, SamplingParams(max_tokens=10, **GREEDY))["a"]
    text = free["text"]
    # A stop string that starts inside one token and ends inside a later one.
    first_len = len(tokenizer.decode(free["tokens"][:2], skip_special_tokens=True))
    stop = text[first_len - 2:first_len + 3]
    stopped = run(make_engine(model, tokenizer), {"a": [1, 2, 3]},
                  SamplingParams(max_tokens=10, stop=[stop], **GREEDY))["a"]
    assert stopped["text"] == text[:text.index(stop)]
    assert stopped["reason"] == "stop"


def test_eos_stops_unless_ignored(model, tokenizer):
    eos = tokenizer.eos_token_id
    free = run(make_engine(model, tokenizer), {"a": [4, 4, 4]}, SamplingParams(max_tokens=6, **GREEDY))["a"]
    engine = make_engine(model, tokenizer)
    engine.eos_token_ids = {free["tokens"][2], eos}
    result = run(engine, {"a": [4, 4, 4]}, SamplingParams(max_tokens=6, temperature=0.0))["a"]
    assert result["tokens"] == free["tokens"][:3]
    assert result["reason"] == "stop"


def test_same_seed_same_tokens(model, tokenizer):
    params = SamplingParams(max_tokens=10, temperature=1.0, top_p=0.9, seed=123, ignore_eos=True)
    first = run(make_engine(model, tokenizer), {"a": [1, 2], "b": [3, 4, 5]}, params)
    second = run(make_engine(model, tokenizer), {"b": [3, 4, 5]}, params)
    assert first["b"]["tokens"] == second["b"]["tokens"]


def test_prompt_too_long(model, tokenizer):
    engine = make_engine(model, tokenizer, max_model_len=16)
    with pytest.raises(PromptTooLongError, match="16"):
        engine.add_request("a", list(range(16)), SamplingParams())
    result = run(engine, {"b": list(range(10))}, SamplingParams(max_tokens=100, **GREEDY))["b"]
    assert len(result["tokens"]) == 6  # clamped to the context left
    assert result["reason"] == "length"


def test_abort_frees_blocks(model, tokenizer):
    engine = make_engine(model, tokenizer)
    engine.add_request("a", list(range(30)), SamplingParams(max_tokens=50, **GREEDY))
    engine.step()
    assert engine.block_manager.num_free_blocks < 256
    engine.abort_request("a")
    assert engine.block_manager.num_free_blocks == 256
    assert not engine.has_unfinished_requests()


def test_duplicate_request_id_rejected(model, tokenizer):
    engine = make_engine(model, tokenizer)
    engine.add_request("a", [1], SamplingParams(max_tokens=1))
    with pytest.raises(ValueError, match="already in use"):
        engine.add_request("a", [1], SamplingParams(max_tokens=1))


def test_penalties_subtract_counts():
    logits = torch.zeros(6)
    out = apply_penalties(logits, [2, 2, 5], SamplingParams(frequency_penalty=0.5, presence_penalty=0.25))
    assert out.tolist() == [0.0, 0.0, -1.25, 0.0, 0.0, -0.75]


def test_top_k_and_top_p_restrict_choices():
    logits = torch.tensor([5.0, 4.0, 3.0, -10.0, -10.0])
    generator = torch.Generator().manual_seed(0)
    top_k = {sample_token(logits, SamplingParams(top_k=2), generator) for _ in range(200)}
    assert top_k == {0, 1}
    # probabilities 0.665, 0.245, 0.090: top_p 0.7 keeps the first two tokens
    top_p = {sample_token(logits, SamplingParams(top_p=0.7), generator) for _ in range(200)}
    assert top_p == {0, 1}
    assert sample_token(logits, SamplingParams(temperature=0.0), generator) == 0


@pytest.mark.parametrize(("field", "value"), [("temperature", 3.0), ("top_p", 0.0), ("max_tokens", 0),
                                              ("logprobs", 21), ("presence_penalty", 2.5)])
def test_invalid_sampling_params(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})
