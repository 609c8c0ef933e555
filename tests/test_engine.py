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


def test_chunked_prefill_matches_whole_prefill(model, tokenizer):
    params = SamplingParams(max_tokens=8, **GREEDY)
    whole = run(make_engine(model, tokenizer, max_num_batched_tokens=4096), PROMPTS, params)
    chunked_engine = make_engine(model, tokenizer, max_num_batched_tokens=5)
    chunked = run(chunked_engine, PROMPTS, params)
    for request_id in PROMPTS:
        assert chunked[request_id]["tokens"] == whole[request_id]["tokens"]


def test_chunked_prefill_keeps_decodes_going(model, tokenizer):
    """A long prompt arriving while another request decodes does not stop that request's steps."""
    engine = make_engine(model, tokenizer, max_num_batched_tokens=6)
    engine.add_request("short", [1, 2, 3], SamplingParams(max_tokens=30, **GREEDY))
    engine.step()
    engine.add_request("long", list(range(100, 160)), SamplingParams(max_tokens=2, **GREEDY))
    decoded_during_prefill = 0
    while engine.sequences["long"].num_computed_tokens < 60:
        decoded_during_prefill += sum(1 for o in engine.step() if o.request_id == "short")
    # 60 prompt tokens at 5 per step (the budget minus the decode) take 12 steps, each with a decode.
    assert decoded_during_prefill == 12


def test_prefix_cache_hit_gives_same_logprobs(model, tokenizer):
    prefix = list(range(300, 340))  # ten full blocks of four tokens
    params = SamplingParams(max_tokens=6, logprobs=3, **GREEDY)

    def generate(engine, request_id, prompt):
        engine.add_request(request_id, prompt, params)
        tokens, logprobs, cached = [], [], None
        while engine.has_unfinished_requests():
            for output in engine.step():
                tokens += output.token_ids
                logprobs += [(r.logprob, r.top) for r in output.logprobs]
                cached = output.num_cached_tokens
        return tokens, logprobs, cached

    cold_engine = make_engine(model, tokenizer, enable_prefix_caching=False)
    cold = generate(cold_engine, "cold", prefix + [7, 8, 9])
    warm_engine = make_engine(model, tokenizer)
    generate(warm_engine, "first", prefix + [1, 2])
    warm = generate(warm_engine, "second", prefix + [7, 8, 9])
    assert warm[2] == 40
    assert cold[2] == 0
    assert warm[0] == cold[0]
    for (warm_lp, warm_top), (cold_lp, cold_top) in zip(warm[1], cold[1]):
        assert warm_lp == pytest.approx(cold_lp, abs=1e-5)
        assert [t for t, _ in warm_top] == [t for t, _ in cold_top]
    assert warm_engine.block_manager.prefix_hits == 40


def test_prefix_cache_eviction_is_lru(tokenizer):
    from kimi_k25.engine.block_manager import BlockManager
    from kimi_k25.engine.sequence import Sequence

    manager = BlockManager(num_blocks=4, block_size=2)

    def seq(prompt):
        return Sequence("x", prompt, SamplingParams(), max_tokens=1)

    first = seq([1, 2, 3, 4, 5])
    manager.allocate(first, 5)
    first.num_computed_tokens = 5
    manager.commit_full_blocks(first)
    assert len(manager.cached) == 2
    manager.free(first)
    assert manager.num_free_blocks == 4

    again = seq([1, 2, 3, 4, 9])
    assert manager.match_prefix(again) == 4
    assert [manager.blocks[b].ref_count for b in again.block_table] == [1, 1]
    manager.free(again)

    # A new prompt takes the never-used block first, then evicts the least recently freed blocks.
    other = seq([7, 7, 7, 7, 7, 7, 7, 7])
    manager.allocate(other, 8)
    assert len(manager.cached) == 0
    assert manager.num_free_blocks == 0


def test_metrics_count_tokens_and_requests(model, tokenizer):
    engine = make_engine(model, tokenizer)
    run(engine, {"a": [1, 2, 3], "b": [4, 5]}, SamplingParams(max_tokens=4, **GREEDY))
    registry = engine.metrics.registry
    assert registry.get_sample_value("kimi_k25:prompt_tokens_total") == 5
    assert registry.get_sample_value("kimi_k25:generation_tokens_total") == 8
    assert registry.get_sample_value("kimi_k25:time_to_first_token_seconds_count") == 2
    assert registry.get_sample_value("kimi_k25:time_per_output_token_seconds_count") == 6
    assert registry.get_sample_value("kimi_k25:request_success_total", {"finished_reason": "length"}) == 2
    assert registry.get_sample_value("kimi_k25:num_requests_running") == 0
