"""ChatFormat: renderer choice, request validation, normalization and the thinking switch."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from kimi_k25.chat import ChatFormat, ChatFormatError, is_thinking, render_chat
from kimi_k25.chat.jinja_renderer import CHAT_TEMPLATE_FILENAME, load_packaged_template

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "City name"}},
            "required": ["city"],
        },
    },
}


@pytest.fixture
def checkpoint_with_template(tmp_path: Path) -> Path:
    """A checkpoint directory that ships this package's K2.5 template."""
    (tmp_path / CHAT_TEMPLATE_FILENAME).write_text(load_packaged_template().source, encoding="utf-8")
    return tmp_path


def test_from_dir_without_template_uses_builtin(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="kimi_k25.chat.format"):
        chat_format = ChatFormat.from_dir(tmp_path)

    assert chat_format.template is None
    assert chat_format.source == "built-in renderer"
    assert "built-in K2.5 renderer" in caplog.text


def test_from_dir_with_template_uses_it(checkpoint_with_template: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="kimi_k25.chat.format"):
        chat_format = ChatFormat.from_dir(checkpoint_with_template)

    assert chat_format.template is not None
    assert chat_format.source == str(checkpoint_with_template / CHAT_TEMPLATE_FILENAME)
    assert chat_format.source in caplog.text


def test_null_reasoning_content_renders_empty_on_both_paths(checkpoint_with_template: Path) -> None:
    messages = [
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": None,
            "reasoning_content": None,
            "tool_calls": [{"id": None, "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}],
        },
    ]
    expected = (
        "<|im_user|>user<|im_middle|>Weather?<|im_end|><|im_assistant|>assistant<|im_middle|><think></think>"
        "<|tool_calls_section_begin|><|tool_call_begin|><|tool_call_argument_begin|>{}<|tool_call_end|>"
        "<|tool_calls_section_end|><|im_end|>"
    )

    for chat_format in (ChatFormat(), ChatFormat.from_dir(checkpoint_with_template)):
        assert chat_format.render(messages, add_generation_prompt=False) == expected, chat_format.source


def test_reasoning_alias_reaches_template(checkpoint_with_template: Path) -> None:
    messages = [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "", "reasoning_content": None, "reasoning": "R", "tool_calls": [
            {"id": "functions.f:0", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        ]},
    ]

    for chat_format in (ChatFormat(), ChatFormat.from_dir(checkpoint_with_template)):
        assert "<think>R</think>" in chat_format.render(messages), chat_format.source


def test_developer_role_renders_as_system(checkpoint_with_template: Path) -> None:
    messages = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    expected = render_chat([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])

    assert ChatFormat().render(messages) == expected
    assert ChatFormat.from_dir(checkpoint_with_template).render(messages) == expected


def test_render_leaves_messages_unchanged() -> None:
    messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "", "reasoning": "R", "tool_calls": [
            {"id": None, "type": "function", "function": {"name": "f", "arguments": {}}}
        ]},
    ]
    tools = [{"type": "function", "function": {"parameters": {}, "name": "f"}}]
    snapshot = json.dumps([messages, tools])

    ChatFormat().render(messages, tools=tools)

    assert json.dumps([messages, tools]) == snapshot


def test_tools_without_encoder_declared_as_json() -> None:
    # Literal output of the official code path, which sorts tool keys before the template runs.
    expected = (
        '<|im_system|>tool_declare<|im_middle|>[{"function":{"description":"Get the current weather for a city.",'
        '"name":"get_weather","parameters":{"properties":{"city":{"description":"City name","type":"string"}},'
        '"required":["city"],"type":"object"}},"type":"function"}]<|im_end|>'
    )

    rendered = ChatFormat(tool_declaration_encoder=None).render([{"role": "user", "content": "Weather?"}], tools=[WEATHER_TOOL])

    assert rendered.startswith(expected + "<|im_user|>")


def test_tool_declaration_encoder_output_is_used() -> None:
    received = []

    def encode(tools: list[dict]) -> str:
        received.append(tools)
        return "# Tools\n\nDECLARATION\n"

    rendered = ChatFormat(tool_declaration_encoder=encode).render([{"role": "user", "content": "Hi"}], tools=[WEATHER_TOOL])

    assert rendered.startswith("<|im_system|>tool_declare<|im_middle|># Tools\n\nDECLARATION\n<|im_end|>")
    assert list(received[0][0]) == ["function", "type"], "the encoder receives key-sorted tools"


def test_tool_declaration_encoder_failure_falls_back(caplog: pytest.LogCaptureFixture) -> None:
    def encode(tools: list[dict]) -> str:
        raise ValueError("unsupported schema")

    with caplog.at_level(logging.WARNING, logger="kimi_k25.chat.format"):
        rendered = ChatFormat(tool_declaration_encoder=encode).render(
            [{"role": "user", "content": "Hi"}], tools=[WEATHER_TOOL]
        )

    assert rendered.startswith('<|im_system|>tool_declare<|im_middle|>[{"function":')
    assert "unsupported schema" in caplog.text


def test_tools_ts_str_from_kwargs_wins() -> None:
    rendered = ChatFormat(tool_declaration_encoder=lambda tools: "ENCODER").render(
        [{"role": "user", "content": "Hi"}],
        tools=[WEATHER_TOOL],
        chat_template_kwargs={"tools_ts_str": "GIVEN"},
    )

    assert rendered.startswith("<|im_system|>tool_declare<|im_middle|>GIVEN<|im_end|>")


@pytest.mark.parametrize(
    ("chat_template_kwargs", "expected"),
    [
        (None, True),
        ({}, True),
        ({"thinking": True}, True),
        ({"thinking": False}, False),
        ({"thinking": 0}, True),
        ({"thinking": None}, True),
        ({"thinking": "false"}, True),
        ({"enable_thinking": False}, True),
    ],
)
def test_is_thinking(chat_template_kwargs: dict | None, expected: bool) -> None:
    assert is_thinking(chat_template_kwargs) is expected


@pytest.mark.parametrize("thinking", [True, False, 0, None, "false"])
def test_is_thinking_agrees_with_template(thinking: object, checkpoint_with_template: Path) -> None:
    rendered = ChatFormat.from_dir(checkpoint_with_template).render(
        [{"role": "user", "content": "Hi"}], chat_template_kwargs={"thinking": thinking}
    )
    expected_end = "<think>" if is_thinking({"thinking": thinking}) else "<think></think>"

    assert rendered.endswith("<|im_middle|>" + expected_end)


def test_render_with_name_label() -> None:
    rendered = ChatFormat().render([{"role": "user", "name": "bob", "content": "hi"}], add_generation_prompt=False)

    assert rendered == "<|im_user|>bob<|im_middle|>hi<|im_end|>"


def _call(**function: object) -> dict:
    return {"id": "functions.f:0", "type": "function", "function": function}


INVALID_REQUESTS = [
    pytest.param([], None, None, "messages", id="empty_messages"),
    pytest.param({"role": "user"}, None, None, "messages", id="messages_not_list"),
    pytest.param(["hello"], None, None, "messages[0]", id="message_not_object"),
    pytest.param([{"content": "hi"}], None, None, "messages[0].role", id="missing_role"),
    pytest.param(
        [{"role": "user", "content": "hi"}, {"role": "moderator", "content": "x"}], None, None, "messages[1].role",
        id="unknown_role",
    ),
    pytest.param([{"role": "user"}], None, None, "messages[0].content", id="user_without_content"),
    pytest.param([{"role": "system", "content": None}], None, None, "messages[0].content", id="system_null_content"),
    pytest.param([{"role": "user", "content": 42}], None, None, "messages[0].content", id="content_not_string"),
    pytest.param(
        [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "input_audio"}]}], None, None,
        "messages[0].content[1].type", id="unknown_part_type",
    ),
    pytest.param(
        [{"role": "user", "content": [{"text": "a"}]}], None, None, "messages[0].content[0].type", id="part_without_type",
    ),
    pytest.param(
        [{"role": "user", "content": [{"type": "text"}]}], None, None, "messages[0].content[0].text", id="text_part_without_text",
    ),
    pytest.param([{"role": "user", "name": 7, "content": "hi"}], None, None, "messages[0].name", id="name_not_string"),
    pytest.param(
        [{"role": "user", "content": "hi"}, {"role": "tool", "content": "18"}], None, None, "messages[1].tool_call_id",
        id="tool_without_tool_call_id",
    ),
    pytest.param([{"role": "tool", "tool_call_id": "x"}], None, None, "messages[0].content", id="tool_without_content"),
    pytest.param(
        [{"role": "assistant", "content": "", "tool_calls": [_call(arguments="{}")]}], None, None,
        "messages[0].tool_calls[0].function.name", id="tool_call_without_name",
    ),
    pytest.param(
        [{"role": "assistant", "content": "", "tool_calls": [_call(name="", arguments="{}")]}], None, None,
        "messages[0].tool_calls[0].function.name", id="tool_call_empty_name",
    ),
    pytest.param(
        [{"role": "assistant", "tool_calls": [{"id": "x", "type": "function"}]}], None, None,
        "messages[0].tool_calls[0].function", id="tool_call_without_function",
    ),
    pytest.param(
        [{"role": "assistant", "tool_calls": [_call(name="f")]}], None, None,
        "messages[0].tool_calls[0].function.arguments", id="tool_call_without_arguments",
    ),
    pytest.param(
        [{"role": "assistant", "tool_calls": [{"id": 3, "function": {"name": "f", "arguments": "{}"}}]}], None, None,
        "messages[0].tool_calls[0].id", id="tool_call_id_not_string",
    ),
    pytest.param(
        [{"role": "assistant", "tool_calls": {"id": "x"}}], None, None, "messages[0].tool_calls", id="tool_calls_not_list",
    ),
    pytest.param(
        [{"role": "user", "content": "hi", "tool_calls": [_call(name="f", arguments="{}")]}], None, None,
        "messages[0].tool_calls", id="tool_calls_on_user",
    ),
    pytest.param(
        [{"role": "assistant", "content": "", "reasoning_content": ["a"]}], None, None,
        "messages[0].reasoning_content", id="reasoning_not_string",
    ),
    pytest.param([{"role": "user", "content": "hi"}], {"type": "function"}, None, "tools", id="tools_not_list"),
    pytest.param([{"role": "user", "content": "hi"}], ["get_weather"], None, "tools[0]", id="tool_not_object"),
    pytest.param([{"role": "user", "content": "hi"}], None, ["thinking"], "chat_template_kwargs", id="kwargs_not_object"),
    pytest.param(
        [{"role": "user", "content": "hi"}], None, {"messages": []}, "chat_template_kwargs.messages", id="kwargs_reserved_key",
    ),
]


@pytest.mark.parametrize(("messages", "tools", "chat_template_kwargs", "param"), INVALID_REQUESTS)
def test_invalid_request_names_param(messages: object, tools: object, chat_template_kwargs: object, param: str) -> None:
    with pytest.raises(ChatFormatError) as error_info:
        ChatFormat().render(messages, tools=tools, chat_template_kwargs=chat_template_kwargs)

    assert error_info.value.param == param


def test_assistant_without_content_is_valid() -> None:
    rendered = ChatFormat().render(
        [{"role": "user", "content": "hi"}, {"role": "assistant"}, {"role": "user", "content": "again"}]
    )

    assert "<|im_assistant|>assistant<|im_middle|><think></think><|im_end|>" in rendered
