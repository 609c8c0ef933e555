"""The agentic chat surface end to end: tool calls, reasoning, tool_choice, structured output.

A scripted model (tests/scripted_model.py) makes the replies known; the requests go through the
real server, engine, sampler and parsers, driven by the official `openai` client.
"""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest

from kimi_k25.chat import tokens as t
from kimi_k25.chat.format import ChatFormat
from kimi_k25.tokenizer.tokenizer import KimiTokenizer
from scripted_model import InProcessServer, ScriptedModel
from server_helpers import openai_client

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
                   "required": ["city"], "additionalProperties": False}}}
SEARCH = {"type": "function", "function": {
    "name": "web-search.v2", "description": "Search the web.",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}}
TOOLS = [WEATHER, SEARCH]


def call_text(name: str, index: int, arguments: str) -> str:
    return f"{t.TOOL_CALL_BEGIN}functions.{name}:{index}{t.TOOL_CALL_ARGUMENT_BEGIN}{arguments}{t.TOOL_CALL_END}"


def section(*calls: str) -> str:
    return t.TOOL_CALLS_SECTION_BEGIN + "".join(calls) + t.TOOL_CALLS_SECTION_END


class Script:
    """Replies chosen by what the prompt contains; the default reply is plain text."""

    def __init__(self) -> None:
        self.rules: list[tuple[str, str]] = []
        self.default = "Plain answer."

    def __call__(self, prompt: str) -> str:
        for needle, reply in self.rules:
            if needle in prompt:
                return reply
        return self.default


@pytest.fixture(scope="module")
def tokenizer(tokenizer_files) -> KimiTokenizer:
    return KimiTokenizer.from_dir(tokenizer_files)


@pytest.fixture(scope="module")
def scripted(tokenizer):
    script = Script()
    model = ScriptedModel(tokenizer, script)
    server = InProcessServer(model, tokenizer, ChatFormat())
    client = openai_client(server.base_url)
    yield script, model, client, server
    server.stop()


@pytest.fixture()
def script(scripted):
    script = scripted[0]
    script.rules.clear()
    script.default = "Plain answer."
    return script


@pytest.fixture()
def model(scripted):
    return scripted[1]


@pytest.fixture()
def client(scripted):
    return scripted[2]


@pytest.fixture()
def base_url(scripted):
    return scripted[3].base_url


def collect_stream(stream):
    """Join a chat stream into (reasoning, content, tool_calls, finish_reason, chunks)."""
    reasoning, content, calls, finish, chunks = "", "", {}, None, 0
    for chunk in stream:
        chunks += 1
        for choice in chunk.choices:
            delta = choice.delta
            reasoning += (delta.model_extra or {}).get("reasoning_content") or ""
            content += delta.content or ""
            for call in delta.tool_calls or []:
                entry = calls.setdefault(call.index, {"id": None, "name": None, "arguments": ""})
                if call.id:
                    assert entry["id"] is None, "a call's id comes once, in its first delta"
                    entry["id"] = call.id
                    assert call.type == "function"
                if call.function and call.function.name:
                    entry["name"] = call.function.name
                if call.function and call.function.arguments:
                    entry["arguments"] += call.function.arguments
            if choice.finish_reason:
                finish = choice.finish_reason
    return reasoning, content, [calls[i] for i in sorted(calls)], finish, chunks


def test_agent_loop_with_tool_call(script, model, client):
    script.rules = [
        ("## Return of functions.get_weather:0", "The user wants a summary.</think>It is 18 °C in Paris."),
        ("Weather in Paris?", "I should call the weather tool.</think>Let me check."
         + section(call_text("get_weather", 0, '{"city": "Paris"}'))),
    ]
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    first = client.chat.completions.create(model="scripted", messages=messages, tools=TOOLS, temperature=0)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.model_extra["reasoning_content"] == "I should call the weather tool."
    assert choice.message.content == "Let me check."
    [call] = choice.message.tool_calls
    assert call.id == "functions.get_weather:0"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}

    messages.append({"role": "assistant", "content": choice.message.content,
                     "reasoning_content": choice.message.model_extra["reasoning_content"],
                     "tool_calls": [call.model_dump()]})
    messages.append({"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 18}'})
    second = client.chat.completions.create(model="scripted", messages=messages, tools=TOOLS, temperature=0)
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == "It is 18 °C in Paris."
    assert second.choices[0].message.tool_calls is None
    # The tool-calling turn is still in progress, so its reasoning is rendered back into the prompt.
    assert "<think>I should call the weather tool.</think>Let me check." in model.prompts_seen[-1]


def test_agent_loop_streaming_matches_whole(script, client):
    script.default = ("Two cities.</think>Checking both." + section(
        call_text("get_weather", 0, '{"city": "Paris"}'), call_text("get_weather", 1, '{"city": "Rome", "unit": "C"}')))
    messages = [{"role": "user", "content": "Paris and Rome?"}]
    whole = client.chat.completions.create(model="scripted", messages=messages, tools=TOOLS, temperature=0)
    reasoning, content, calls, finish, _ = collect_stream(client.chat.completions.create(
        model="scripted", messages=messages, tools=TOOLS, temperature=0, stream=True))
    message = whole.choices[0].message
    assert reasoning == message.model_extra["reasoning_content"]
    assert content == message.content
    assert finish == whole.choices[0].finish_reason == "tool_calls"
    assert [(c["id"], c["name"], c["arguments"]) for c in calls] == [
        (c.id, c.function.name, c.function.arguments) for c in message.tool_calls]
    assert len(calls) == 2


def test_large_argument_streams_progressively(script, client):
    # " temperature" is a single token of the test tokenizer, so 50,000 characters cost ~4,200 steps.
    long_text = " temperature" * 4167
    script.default = "Search.</think>" + section(call_text("web-search.v2", 0, json.dumps({"query": long_text})))
    stream = client.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "go"}],
                                            tools=TOOLS, temperature=0, stream=True,
                                            extra_body={"chat_template_kwargs": {"thinking": True}})
    fragments = 0
    arguments = ""
    for chunk in stream:
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or []:
                if call.function and call.function.arguments:
                    fragments += 1
                    arguments += call.function.arguments
    assert len(long_text) >= 50_000
    assert json.loads(arguments) == {"query": long_text}
    # Streamed as written: far more fragments than a buffered argument (one) would give.
    assert fragments > 1000


def test_cut_off_call_keeps_complete_calls(script, client):
    script.default = "ok</think>" + section(call_text("get_weather", 0, '{"city": "Oslo"}'),
                                             call_text("get_weather", 1, '{"city": "Bergen", "unit": "C"}'))
    reply = client.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "Norway"}],
                                           tools=TOOLS, temperature=0, max_tokens=40)
    choice = reply.choices[0]
    assert choice.finish_reason == "length"
    assert [json.loads(c.function.arguments)["city"] for c in choice.message.tool_calls] == ["Oslo"]
    assert "<|" not in (choice.message.content or "")


def test_parallel_tool_calls_false_keeps_first(script, client):
    script.default = "two</think>" + section(call_text("get_weather", 0, '{"city": "A"}'),
                                              call_text("get_weather", 1, '{"city": "B"}'))
    reply = client.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "x"}],
                                           tools=TOOLS, temperature=0, parallel_tool_calls=False)
    assert [json.loads(c.function.arguments)["city"] for c in reply.choices[0].message.tool_calls] == ["A"]
    _, _, calls, _, _ = collect_stream(client.chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "x"}], tools=TOOLS, temperature=0,
        parallel_tool_calls=False, stream=True))
    assert len(calls) == 1


def test_tool_choice_none_masks_the_section(script, client):
    script.default = "call it</think>" + section(call_text("get_weather", 0, '{"city": "Paris"}'))
    reply = client.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "x"}],
                                           tools=TOOLS, tool_choice="none", temperature=0, max_tokens=30)
    message = reply.choices[0].message
    assert message.tool_calls is None
    assert t.TOOL_CALLS_SECTION_BEGIN not in (message.content or "")
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_tool_choice_required_forces_a_call(script, client):
    script.default = "I will just chat.</think>No tools needed."
    for stream in (False, True):
        kwargs = dict(model="scripted", messages=[{"role": "user", "content": "x"}], tools=TOOLS,
                      tool_choice="required", temperature=0, max_tokens=200)
        if stream:
            reasoning, _, calls, finish, _ = collect_stream(client.chat.completions.create(**kwargs, stream=True))
        else:
            reply = client.chat.completions.create(**kwargs)
            reasoning = reply.choices[0].message.model_extra["reasoning_content"]
            calls = [{"name": c.function.name, "arguments": c.function.arguments}
                     for c in reply.choices[0].message.tool_calls]
            finish = reply.choices[0].finish_reason
        assert reasoning == "I will just chat."  # the reasoning itself is not constrained
        assert finish == "tool_calls"
        assert calls and calls[0]["name"] in ("get_weather", "web-search.v2")
        schema = (WEATHER if calls[0]["name"] == "get_weather" else SEARCH)["function"]["parameters"]
        jsonschema.validate(json.loads(calls[0]["arguments"]), schema)


def test_named_tool_choice_calls_that_function(script, client):
    script.default = "Thinking.</think>" + section(call_text("get_weather", 0, '{"city": "Paris"}'))
    reply = client.chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "x"}], tools=TOOLS, temperature=0, max_tokens=200,
        tool_choice={"type": "function", "function": {"name": "web-search.v2"}})
    [call] = reply.choices[0].message.tool_calls
    assert call.function.name == "web-search.v2"
    jsonschema.validate(json.loads(call.function.arguments), SEARCH["function"]["parameters"])


def test_response_format_json_schema_after_reasoning(script, client):
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"],
              "additionalProperties": False}
    script.default = 'Compute it.</think>{"answer": 42}'
    reply = client.chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "6*7?"}], temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "result", "schema": schema, "strict": True}})
    message = reply.choices[0].message
    assert message.model_extra["reasoning_content"] == "Compute it."
    assert json.loads(message.content) == {"answer": 42}


def test_response_format_overrides_free_text(script, client):
    script.default = "Hmm.</think>hello world, not json"
    reply = client.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "x"}],
                                           temperature=0, max_tokens=60, response_format={"type": "json_object"},
                                           extra_body={"chat_template_kwargs": {"thinking": True}})
    content = reply.choices[0].message.content
    assert content is not None
    assert content.lstrip().startswith("{")
    if reply.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(content), dict)


def test_partial_mode_continues_the_answer(script, model, client):
    script.default = " Paris."
    reply = client.chat.completions.create(model="scripted", temperature=0, messages=[
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "The capital is", "partial": True}])
    assert reply.choices[0].message.content == " Paris."
    assert model.prompts_seen[-1].endswith("<think></think>The capital is")


def test_thinking_disabled_alias(script, model, client):
    script.default = "Direct answer."
    reply = client.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "x"}],
                                           temperature=0, extra_body={"thinking": {"type": "disabled"}})
    assert reply.choices[0].message.content == "Direct answer."
    assert reply.choices[0].message.model_extra.get("reasoning_content") is None
    assert model.prompts_seen[-1].endswith("<think></think>")


def test_reasoning_alias_on_input(script, model, client):
    client.chat.completions.create(model="scripted", temperature=0, tools=TOOLS, messages=[
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": "", "reasoning": "alias reasoning",
         "tool_calls": [{"id": "functions.get_weather:0", "type": "function",
                         "function": {"name": "get_weather", "arguments": "{\"city\": \"A\"}"}}]},
        {"role": "tool", "tool_call_id": "functions.get_weather:0", "content": "{}"}])
    assert "<think>alias reasoning</think>" in model.prompts_seen[-1]


def test_logprobs_n_seed_and_usage(script, client):
    script.default = "abc"
    reply = client.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "x"}], n=2, temperature=0,
                                           seed=3, logprobs=True, top_logprobs=2,
                                           extra_body={"chat_template_kwargs": {"thinking": False}})
    assert len(reply.choices) == 2
    for choice in reply.choices:
        assert choice.message.content == "abc"
        entries = choice.logprobs.content
        assert "".join(e.token for e in entries) == "abc"
        assert all(len(e.top_logprobs) == 2 for e in entries)
    assert reply.usage.completion_tokens == 2 * (len(entries) + 1)  # each choice also generated <|im_end|>


def test_stream_include_usage(script, client):
    script.default = "short"
    chunks = list(client.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "x"}],
                                                 stream=True, stream_options={"include_usage": True},
                                                 extra_body={"chat_template_kwargs": {"thinking": False}}))
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])


def test_ignored_fields_accepted(script, client):
    script.default = "ok"
    reply = client.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "x"}],
                                           user="u-1", metadata={"k": "v"}, store=False)
    assert reply.choices[0].finish_reason == "stop"


@pytest.mark.parametrize(("body", "param"), [
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice.function.name"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
    ({"response_format": {"type": "yaml"}}, "response_format.type"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objectx"}}}},
     "response_format"),
    ({"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}}, "response_format"),
    ({"thinking": {"type": "maybe"}}, "thinking.type"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"messages": [{"role": "user", "content": "x", "partial": True}]}, "messages[0].partial"),
    ({"tools": [{"type": "function", "function": {}}]}, "tools[0].function.name"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
])
def test_invalid_agent_requests(base_url, body, param):
    payload = {"model": "scripted", "messages": [{"role": "user", "content": "x"}], **body}
    response = httpx.post(f"{base_url}/v1/chat/completions", json=payload, timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_disconnect_aborts_non_streaming_request(script, scripted, base_url):
    import time

    script.default = " temperature" * 20_000  # far longer than the client waits
    engine = scripted[3].async_engine.engine
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{base_url}/v1/chat/completions", timeout=1.0,
                   json={"model": "scripted", "messages": [{"role": "user", "content": "long"}]})
    deadline = time.monotonic() + 10
    while engine.has_unfinished_requests() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not engine.has_unfinished_requests()


def test_concurrent_streams_keep_separate_state(script, client):
    import concurrent.futures

    script.rules = [
        ("ask-A", "a</think>" + section(call_text("get_weather", 0, '{"city": "Lima"}'))),
        ("ask-B", "b</think>Just text <not a marker> {braces}."),
        ("ask-C", "c</think>" + section(call_text("get_weather", 0, '{"city": "Quito", "unit": "F"}'))),
    ]

    def run(question: str, max_tokens: int | None):
        return collect_stream(client.chat.completions.create(
            model="scripted", messages=[{"role": "user", "content": question}], tools=TOOLS, temperature=0,
            stream=True, max_tokens=max_tokens))

    jobs = [("ask-A", None), ("ask-B", None), ("ask-C", 20), ("ask-A", None)]
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(lambda job: run(*job), jobs))
    assert [r[3] for r in results] == ["tool_calls", "stop", "length", "tool_calls"]
    assert json.loads(results[0][2][0]["arguments"]) == {"city": "Lima"}
    assert results[1][1] == "Just text <not a marker> {braces}."
    assert results[1][2] == []
    assert results[3][2] == results[0][2]


def test_streaming_agent_loop_two_turns(script, client):
    script.rules = [
        ("## Return of functions.get_weather:0", "Summarise.</think>Sunny in Kyiv."),
        ("Kyiv?", "Need data.</think>" + section(call_text("get_weather", 0, '{"city": "Kyiv"}'))),
    ]
    messages = [{"role": "user", "content": "Kyiv?"}]
    reasoning, content, calls, finish, _ = collect_stream(client.chat.completions.create(
        model="scripted", messages=messages, tools=TOOLS, temperature=0, stream=True))
    assert finish == "tool_calls"
    messages.append({"role": "assistant", "content": content or None, "reasoning_content": reasoning,
                     "tool_calls": [{"id": c["id"], "type": "function",
                                     "function": {"name": c["name"], "arguments": c["arguments"]}} for c in calls]})
    messages.append({"role": "tool", "tool_call_id": calls[0]["id"], "content": "sunny"})
    reasoning, content, calls, finish, _ = collect_stream(client.chat.completions.create(
        model="scripted", messages=messages, tools=TOOLS, temperature=0, stream=True))
    assert (reasoning, content, calls, finish) == ("Summarise.", "Sunny in Kyiv.", [], "stop")


def test_stream_disconnect_frees_the_slot(script, scripted, base_url):
    import time

    script.default = " temperature" * 20_000
    engine = scripted[3].async_engine.engine
    body = {"model": "scripted", "stream": True, "messages": [{"role": "user", "content": "long"}]}
    with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body, timeout=30) as response:
        for index, _ in enumerate(response.iter_lines()):
            if index > 5:
                break
    deadline = time.monotonic() + 10
    while engine.has_unfinished_requests() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not engine.has_unfinished_requests()
    assert engine.block_manager.usage == 0.0


def test_full_queue_is_429_with_retry_after(scripted, base_url):
    async_engine = scripted[3].async_engine
    scheduler = async_engine.engine.scheduler
    limit, max_num_seqs = async_engine.max_waiting_requests, scheduler.max_num_seqs
    body = {"model": "scripted", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
    async_engine.max_waiting_requests = 0
    try:
        # Idle: the request would run at once, so a limit of 0 waiting requests admits it.
        assert httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=30).status_code == 200
        scheduler.max_num_seqs = 0  # a full batch: this request would have to wait
        response = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=30)
    finally:
        async_engine.max_waiting_requests, scheduler.max_num_seqs = limit, max_num_seqs
    assert response.status_code == 429
    assert response.headers["retry-after"] == "1"
    assert response.json()["error"]["code"] == "queue_full"
