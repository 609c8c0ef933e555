"""End-to-end tests: the server in a subprocess on 127.0.0.1, driven by the official `openai` client.

The served checkpoint is a random transformers model written in the official layout, so the
expected tokens of every greedy request come from transformers' `generate` on the same weights.
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest
import torch

from kimi_k25.chat.format import ChatFormat
from kimi_k25.chat.reasoning import split_reasoning
from kimi_k25.tokenizer.tokenizer import KimiTokenizer
from server_helpers import ServerProcess, chat_reply_as_served, openai_client

MAX_MODEL_LEN = 256
MODEL_NAME = "tiny-kimi"


@pytest.fixture(scope="module")
def server(served_checkpoint, tmp_path_factory):
    checkpoint_dir, _ = served_checkpoint
    process = ServerProcess(["--model", str(checkpoint_dir), "--dtype", "float32", "--max-model-len",
                             str(MAX_MODEL_LEN), "--kv-cache-gib", "0.05", "--max-num-seqs", "8"],
                            tmp_path_factory.mktemp("logs") / "server.log")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai_client(server.base_url)


@pytest.fixture(scope="module")
def tokenizer(served_checkpoint) -> KimiTokenizer:
    return KimiTokenizer.from_dir(served_checkpoint[0])


@pytest.fixture(scope="module")
def chat_format(served_checkpoint) -> ChatFormat:
    return ChatFormat.from_dir(served_checkpoint[0])


def reference_generate(model, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """Greedy tokens from transformers' generate, end-of-sequence ignored."""
    with torch.no_grad():
        output = model.generate(torch.tensor([prompt_ids]), max_new_tokens=max_new_tokens, do_sample=False,
                                eos_token_id=None, pad_token_id=0, min_new_tokens=max_new_tokens)
    return output[0, len(prompt_ids):].tolist()


def expected_chat_text(served_checkpoint, tokenizer, chat_format, messages, max_tokens, thinking=True):
    """The greedy reply transformers produces for a chat, cut at the end-of-turn token, decoded as the server does."""
    _, reference = served_checkpoint
    kwargs = None if thinking else {"thinking": False}
    prompt_ids = tokenizer.encode(chat_format.render(messages, chat_template_kwargs=kwargs))
    text, completion_tokens = chat_reply_as_served(tokenizer, reference_generate(reference, prompt_ids, max_tokens))
    return text, len(prompt_ids), completion_tokens


MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name three colours."}]


def test_models_lists_served_name(client):
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL_NAME]
    assert models[0].model_extra["max_model_len"] == MAX_MODEL_LEN


def test_health_and_request_id(server):
    response = httpx.get(f"{server.base_url}/health", headers={"x-request-id": "probe-1"})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "probe-1"


def test_chat_thinking_returns_reasoning(client, served_checkpoint, tokenizer, chat_format):
    text, num_prompt, num_completion = expected_chat_text(served_checkpoint, tokenizer, chat_format, MESSAGES, 12)
    reasoning, content = split_reasoning(text, thinking=True)
    response = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=12, temperature=0)
    message = response.choices[0].message
    assert reasoning is not None
    assert message.model_extra["reasoning_content"] == reasoning
    assert message.content == content
    assert response.usage.prompt_tokens == num_prompt
    assert response.usage.completion_tokens == num_completion
    assert response.usage.total_tokens == num_prompt + num_completion


def test_chat_instant_has_no_reasoning(client, served_checkpoint, tokenizer, chat_format):
    text, num_prompt, _ = expected_chat_text(served_checkpoint, tokenizer, chat_format, MESSAGES, 10, thinking=False)
    response = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=10, temperature=0,
                                              extra_body={"chat_template_kwargs": {"thinking": False}})
    message = response.choices[0].message
    assert message.content == text
    assert message.model_extra.get("reasoning_content") is None
    assert response.usage.prompt_tokens == num_prompt


def test_chat_stream_matches_whole_response(client):
    whole = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=14, temperature=0)
    stream = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=14, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    reasoning, content, finish_reasons, usage, roles = "", "", [], None, []
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            roles.append(choice.delta.role)
            reasoning += (choice.delta.model_extra or {}).get("reasoning_content") or ""
            content += choice.delta.content or ""
            if choice.finish_reason:
                finish_reasons.append(choice.finish_reason)
    assert roles[0] == "assistant"
    assert reasoning == whole.choices[0].message.model_extra["reasoning_content"]
    assert (content or None) == whole.choices[0].message.content
    assert finish_reasons == [whole.choices[0].finish_reason]
    assert usage is not None
    assert usage.completion_tokens == whole.usage.completion_tokens


def test_issue_request_body_accepted_as_is(server):
    body = {
        "messages": [{"role": "user", "content": "Hello there"}],
        "model": MODEL_NAME,
        "chat_template_kwargs": {"thinking": True},
        "frequency_penalty": 0,
        "max_tokens": 16384,
        "presence_penalty": 0,
        "stream": True,
        "temperature": 1,
        "top_p": 1,
    }
    events = []
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body, timeout=120) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(line[len("data: "):])
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all("error" not in c for c in chunks)
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    # max_tokens beyond the context is clamped to the room left, never rejected
    assert finish in (["stop"], ["length"])


def test_completions_greedy_tokens_match_transformers(client, served_checkpoint):
    _, reference = served_checkpoint
    prompt = list(range(1000, 1020))
    expected = reference_generate(reference, prompt, 12)
    response = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=12, temperature=0, logprobs=3,
                                         extra_body={"return_tokens_as_token_ids": True, "ignore_eos": True})
    choice = response.choices[0]
    assert [int(t.removeprefix("token_id:")) for t in choice.logprobs.tokens] == expected
    assert len(choice.logprobs.token_logprobs) == 12
    assert all(len(top) == 3 for top in choice.logprobs.top_logprobs)
    assert choice.logprobs.text_offset == sorted(choice.logprobs.text_offset)
    assert choice.finish_reason == "length"
    assert response.usage.prompt_tokens == 20
    assert response.usage.completion_tokens == 12


def test_completions_logprobs_are_log_softmax(client, served_checkpoint):
    _, reference = served_checkpoint
    prompt = [5000, 6000, 7000, 8000]
    response = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=1, temperature=0, logprobs=2,
                                         extra_body={"return_tokens_as_token_ids": True})
    with torch.no_grad():
        expected = torch.log_softmax(reference(torch.tensor([prompt])).logits[0, -1], dim=-1)
    top = response.choices[0].logprobs.top_logprobs[0]
    for token, logprob in top.items():
        assert logprob == pytest.approx(expected[int(token.removeprefix("token_id:"))].item(), abs=1e-4)


def test_completions_text_prompt_and_list(client, tokenizer):
    text_prompt = "The capital of France is"
    single = client.completions.create(model=MODEL_NAME, prompt=text_prompt, max_tokens=5, temperature=0)
    batch = client.completions.create(model=MODEL_NAME, prompt=[text_prompt, "Two plus two"], max_tokens=5,
                                      temperature=0)
    assert [c.index for c in batch.choices] == [0, 1]
    assert batch.choices[0].text == single.choices[0].text
    assert single.usage.prompt_tokens == len(tokenizer.encode(text_prompt))


def test_seeded_sampling_is_reproducible(client):
    kwargs = dict(model=MODEL_NAME, prompt="Once upon a time", max_tokens=16, temperature=1.0, top_p=0.9, seed=42, n=2)
    first = client.completions.create(**kwargs)
    second = client.completions.create(**kwargs)
    assert [c.text for c in first.choices] == [c.text for c in second.choices]
    assert first.choices[0].text != first.choices[1].text


def test_stop_string_cuts_text(client):
    full = client.completions.create(model=MODEL_NAME, prompt=[11, 12, 13], max_tokens=10, temperature=0,
                                     extra_body={"ignore_eos": True}).choices[0].text
    stop = full[3:6]
    assert stop.strip(), "the reference output needs visible characters to cut at"
    cut = client.completions.create(model=MODEL_NAME, prompt=[11, 12, 13], max_tokens=10, temperature=0, stop=[stop],
                                    extra_body={"ignore_eos": True}).choices[0]
    assert cut.text == full[:full.index(stop)]
    assert cut.finish_reason == "stop"


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-5", messages=MESSAGES)
    error = info.value.body
    assert error["code"] == "model_not_found"
    assert error["param"] == "model"
    assert MODEL_NAME in error["message"]


@pytest.mark.parametrize(("body", "param"), [
    ({"temperature": 5}, "temperature"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ({"messages": []}, "messages"),
    ({"frobnicate": True}, "frobnicate"),
    ({"n": "many"}, "n"),
])
def test_invalid_fields_are_400_naming_field(server, body, param):
    payload = {"model": MODEL_NAME, "messages": MESSAGES, **body}
    response = httpx.post(f"{server.base_url}/v1/chat/completions", json=payload, timeout=30)
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert param.split("[")[0].split(".")[0] in error["message"]


def test_missing_messages_is_400(server):
    response = httpx.post(f"{server.base_url}/v1/chat/completions", json={"model": MODEL_NAME}, timeout=30)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages"


def test_malformed_json_is_400(server):
    response = httpx.post(f"{server.base_url}/v1/chat/completions", content=b"{not json",
                          headers={"content-type": "application/json"}, timeout=30)
    assert response.status_code == 400
    assert "JSON" in response.json()["error"]["message"]


def test_prompt_longer_than_context_is_400(client, tokenizer):
    long_prompt = list(range(2000, 2000 + MAX_MODEL_LEN + 5))
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL_NAME, prompt=long_prompt, max_tokens=4)
    message = info.value.body["message"]
    assert str(MAX_MODEL_LEN) in message
    assert str(len(long_prompt)) in message
    assert info.value.body["code"] == "context_length_exceeded"


def test_out_of_vocabulary_prompt_is_400(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL_NAME, prompt=[1, 2, 999999], max_tokens=2)
    assert "999999" in info.value.body["message"]


def test_unknown_route_is_404_in_openai_shape(server):
    response = httpx.get(f"{server.base_url}/v1/nothing-here", timeout=30)
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found_error"


def test_server_keeps_serving_after_errors(client, server):
    for _ in range(3):
        httpx.post(f"{server.base_url}/v1/chat/completions", json={"model": MODEL_NAME, "messages": "x"}, timeout=30)
    response = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=3, temperature=0)
    assert response.choices[0].finish_reason in ("stop", "length")
    assert "Traceback" not in server.log()


def test_concurrent_requests_match_sequential(client):
    import concurrent.futures

    prompts = [[100 + i, 200 + i, 300 + i] * (i + 1) for i in range(6)]

    def complete(prompt):
        return client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=8, temperature=0,
                                         extra_body={"ignore_eos": True}).choices[0].text

    sequential = [complete(p) for p in prompts]
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        concurrent_results = list(pool.map(complete, prompts))
    assert concurrent_results == sequential


def test_non_json_body_names_content_type(server):
    response = httpx.post(f"{server.base_url}/v1/chat/completions", timeout=30,
                          content=b'{"model": "tiny-kimi", "messages": [{"role": "user", "content": "SECRET"}]}')
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert "content-type: application/json" in message
    assert "SECRET" not in message


def test_rejected_values_are_not_echoed(server):
    response = httpx.post(f"{server.base_url}/v1/chat/completions", timeout=30,
                          json={"model": MODEL_NAME, "messages": "SECRET prompt text"})
    assert response.status_code == 400
    assert "SECRET" not in response.text
    assert "SECRET" not in server.log()


@pytest.mark.parametrize(("endpoint", "body", "param", "hint"), [
    ("completions", {"prompt": {"t": 1}}, "prompt", "list of token ids"),
    ("completions", {"prompt": "x", "stop": 5}, "stop", "list of up to 4 strings"),
    ("chat/completions", {"messages": MESSAGES, "tool_choice": 3}, "tool_choice", "required"),
])
def test_union_fields_list_accepted_forms(server, endpoint, body, param, hint):
    response = httpx.post(f"{server.base_url}/v1/{endpoint}", json={"model": MODEL_NAME, **body}, timeout=30)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param
    assert hint in error["message"]


def test_misspelled_field_reported_before_missing(server):
    response = httpx.post(f"{server.base_url}/v1/chat/completions", json={"model": MODEL_NAME, "mesages": MESSAGES},
                          timeout=30)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "mesages"


@pytest.mark.parametrize(("kwargs", "param"), [
    ({"thinkng": False}, "chat_template_kwargs.thinkng"),
    ({"thinking": "no"}, "chat_template_kwargs.thinking"),
])
def test_chat_template_kwargs_checked(server, kwargs, param):
    response = httpx.post(f"{server.base_url}/v1/chat/completions", timeout=30,
                          json={"model": MODEL_NAME, "messages": MESSAGES, "chat_template_kwargs": kwargs})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


def test_text_only_model_rejects_images(server):
    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "see"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}
    response = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "messages[0].content[1]"
    assert error["code"] == "media_not_supported"


def test_metrics_endpoint_names_match_vllm(client, server):
    client.completions.create(model=MODEL_NAME, prompt=[1, 2, 3], max_tokens=2, temperature=0)
    text = httpx.get(f"{server.base_url}/metrics", timeout=30).text
    for name in ("kimi_k25:num_requests_running", "kimi_k25:num_requests_waiting",
                 "kimi_k25:time_to_first_token_seconds_bucket", "kimi_k25:time_per_output_token_seconds_bucket",
                 "kimi_k25:e2e_request_latency_seconds_bucket", "kimi_k25:prompt_tokens_total",
                 "kimi_k25:generation_tokens_total", "kimi_k25:kv_cache_usage_perc",
                 "kimi_k25:prefix_cache_hits_total", "kimi_k25:num_preemptions_total"):
        assert name in text


def test_shared_prefix_reports_cached_tokens(client):
    prompt = list(range(3000, 3100))
    client.completions.create(model=MODEL_NAME, prompt=prompt + [1], max_tokens=1, temperature=0)
    second = client.completions.create(model=MODEL_NAME, prompt=prompt + [2], max_tokens=1, temperature=0)
    assert second.usage.prompt_tokens_details.cached_tokens == 96  # six full blocks of 16
