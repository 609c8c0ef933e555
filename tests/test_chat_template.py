"""Prompt rendering: the built-in renderer against the packaged Jinja template, and both against
worked examples of the official K2.5 template's output."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import pytest

from kimi_k25.chat import (
    ChatFormat,
    ChatTemplateError,
    ChatTemplateInputError,
    ChatTemplateSecurityError,
    JinjaChatTemplate,
    load_packaged_template,
    render_chat,
)
from kimi_k25.chat.validation import deep_sort_keys

# ---------------------------------------------------------------------------------------------
# Shared table of conversations. Each case contains the keyword arguments of render_chat, and a
# case without "thinking" leaves the template variable undefined.
# ---------------------------------------------------------------------------------------------

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


def _weather_call(call_id: str | None, city: str, *, as_object: bool = False) -> dict:
    arguments = {"city": city} if as_object else json.dumps({"city": city})
    call = {"type": "function", "function": {"name": "get_weather", "arguments": arguments}}
    if call_id is not None:
        call["id"] = call_id
    return call


CONVERSATIONS = [
    pytest.param(
        {"messages": [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "Hello"}]},
        id="system_and_user",
    ),
    pytest.param({"messages": [{"role": "user", "content": "Hello"}]}, id="user_only"),
    pytest.param(
        {
            "messages": [
                {"role": "system", "name": "policy", "content": "Be brief."},
                {"role": "user", "name": "bob", "content": "hi"},
                {"role": "user", "name": "", "content": "empty name falls back to the role"},
            ]
        },
        id="name_labels",
    ),
    pytest.param(
        {
            "messages": [
                {"role": "system", "content": "SYS"},
                {"role": "user", "content": "Q1"},
                {"role": "assistant", "content": "A1", "reasoning_content": "R1"},
                {"role": "user", "content": "Q2"},
                {"role": "assistant", "content": "A2", "reasoning_content": "R2"},
                {"role": "user", "content": "Q3"},
            ]
        },
        id="multi_turn_reasoning_in_history",
    ),
    pytest.param(
        {
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {
                    "role": "assistant",
                    "content": "Checking.",
                    "reasoning_content": "Call the tool.",
                    "tool_calls": [_weather_call("functions.get_weather:0", "Paris")],
                },
                {"role": "tool", "name": "get_weather", "tool_call_id": "functions.get_weather:0", "content": '{"temp": 18}'},
            ],
            "tools": [WEATHER_TOOL],
        },
        id="tool_call_string_arguments",
    ),
    pytest.param(
        {
            "messages": [
                {"role": "user", "content": "Météo à Zürich ?"},
                {
                    "role": "assistant",
                    "content": None,
                    "reasoning_content": "Use the tool.",
                    "tool_calls": [
                        {
                            "id": "functions.get_weather:0",
                            "type": "function",
                            "function": {
                                "name": "get_weather",
                                "arguments": {"city": "Zürich", "units": ["°C", None, True, 2.5], "nested": {"a": {}}},
                            },
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "functions.get_weather:0", "content": "leicht bewölkt"},
            ],
            "tools": [WEATHER_TOOL],
        },
        id="tool_call_object_arguments",
    ),
    pytest.param(
        {
            "messages": [
                {"role": "user", "content": "Paris and Rome?"},
                {
                    "role": "assistant",
                    "content": "",
                    "reasoning_content": "Two calls.",
                    "tool_calls": [
                        _weather_call("functions.get_weather:0", "Paris"),
                        _weather_call("functions.get_weather:1", "Rome", as_object=True),
                        _weather_call("functions.get_weather:2", "Oslo"),
                    ],
                },
                {"role": "tool", "name": "get_weather", "tool_call_id": "functions.get_weather:0", "content": '{"temp": 18}'},
                {"role": "tool", "tool_call_id": "functions.get_weather:1", "content": '{"temp": 24}'},
                {"role": "tool", "tool_call_id": "functions.get_weather:2", "content": [{"type": "text", "text": "-3"}]},
            ],
            "tools": [WEATHER_TOOL],
        },
        id="parallel_calls_and_results",
    ),
    pytest.param(
        {
            "messages": [
                {"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": "", "tool_calls": [_weather_call(None, "Paris")]},
                {"role": "tool", "tool_call_id": "", "content": "sunny"},
            ]
        },
        id="tool_call_missing_id",
    ),
    pytest.param(
        {
            "messages": [
                {"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": "On it.", "tool_calls": [_weather_call("call_abc", "Paris")]},
                {"role": "tool", "name": "get_weather", "tool_call_id": "call_abc", "content": "sunny"},
            ],
            "thinking": True,
        },
        id="client_rewritten_ids",
    ),
    pytest.param(
        {
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {
                    "role": "assistant",
                    "content": "",
                    "reasoning_content": "dropped: this step is history",
                    "tool_calls": [_weather_call("functions.get_weather:0", "Paris")],
                },
                {"role": "tool", "tool_call_id": "functions.get_weather:0", "content": "18"},
                {"role": "assistant", "content": "It is 18 degrees.", "reasoning_content": "also dropped"},
                {"role": "user", "content": "Thanks. And Rome?"},
                {
                    "role": "assistant",
                    "content": "",
                    "reasoning_content": "kept: the turn is in progress",
                    "tool_calls": [_weather_call("functions.get_weather:1", "Rome")],
                },
                {"role": "tool", "tool_call_id": "functions.get_weather:1", "content": "24"},
            ],
            "tools": [WEATHER_TOOL],
        },
        id="completed_tool_turn_then_new_turn",
    ),
    pytest.param(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Compare "},
                        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                        {"type": "text", "text": "and"},
                        {"type": "image", "image": "b.png"},
                        {"type": "video_url", "video_url": {"url": "https://example.com/c.mp4"}},
                        {"type": "video", "video": "d.mp4"},
                        {"type": "text", "text": "What changed?"},
                    ],
                },
            ]
        },
        id="multimodal_parts",
    ),
    pytest.param(
        {
            "messages": [
                {"role": "system", "content": None},
                {"role": "user", "content": None},
                {"role": "assistant", "content": None},
            ],
            "add_generation_prompt": False,
        },
        id="null_content",
    ),
    pytest.param(
        {
            "messages": [
                {"role": "user", "content": "Weather?"},
                {
                    "role": "assistant",
                    "content": "",
                    "reasoning_content": "not shown in instant mode",
                    "tool_calls": [_weather_call("functions.get_weather:0", "Paris")],
                },
                {"role": "tool", "tool_call_id": "functions.get_weather:0", "content": "18"},
            ],
            "thinking": False,
        },
        id="thinking_false",
    ),
    pytest.param(
        {
            "messages": [{"role": "user", "content": "Hello"}],
            "thinking": 0,
        },
        id="thinking_zero_is_not_false",
    ),
    pytest.param(
        {
            "messages": [
                {"role": "user", "content": "Hello"},
                {"role": "assistant", "content": "Hi!", "reasoning_content": "greeting"},
            ],
            "add_generation_prompt": False,
        },
        id="no_generation_prompt",
    ),
    pytest.param(
        {"messages": [{"role": "user", "content": "Weather?"}], "tools": [WEATHER_TOOL]},
        id="tools_json_declaration",
    ),
    pytest.param(
        {
            "messages": [{"role": "user", "content": "Weather?"}],
            "tools": [WEATHER_TOOL],
            "tools_ts_str": "# Tools\n\n## functions\nnamespace functions {\ntype get_weather = (_: {}) => any;\n}\n",
        },
        id="tools_ts_str_declaration",
    ),
    pytest.param(
        {"messages": [{"role": "user", "content": "Weather?"}], "tools": [], "tools_ts_str": "ignored without tools"},
        id="empty_tool_list",
    ),
    pytest.param(
        {
            "messages": [
                {"role": "system", "content": "Réponds en français. 日本語も可。"},
                {"role": "user", "content": "Ça va ? 🙂\nNouvelle ligne"},
                {
                    "role": "assistant",
                    "content": [{"type": "text", "text": "Très bien, "}, {"type": "text", "text": "merci ! ✅"}],
                },
                {"role": "user", "content": "{{ not a template }} <think>literal</think>"},
            ]
        },
        id="unicode_and_assistant_parts",
    ),
    pytest.param(
        {
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "", "reasoning_content": None, "tool_calls": []},
            ],
            "add_generation_prompt": False,
        },
        id="empty_tool_call_list_is_history",
    ),
]


def _render_with_template(template: JinjaChatTemplate, case: dict) -> str:
    variables = {"add_generation_prompt": True, **case}
    return template.render(**variables)


@pytest.fixture(scope="module")
def packaged_template() -> JinjaChatTemplate:
    return load_packaged_template()


@pytest.mark.parametrize("case", CONVERSATIONS)
def test_builtin_matches_packaged_template(case: dict, packaged_template: JinjaChatTemplate) -> None:
    original = copy.deepcopy(case)

    assert render_chat(**case) == _render_with_template(packaged_template, case)
    assert case == original, "rendering must not modify the caller's messages"


@pytest.mark.parametrize("case", CONVERSATIONS)
def test_packaged_template_in_transformers_environment(case: dict, packaged_template: JinjaChatTemplate) -> None:
    # transformers' own renderer is the environment checkpoint templates are written for.
    chat_template_utils = pytest.importorskip("transformers.utils.chat_template_utils")
    variables = dict(case)
    messages = variables.pop("messages")
    tools = variables.pop("tools", None)
    add_generation_prompt = variables.pop("add_generation_prompt", True)

    rendered, _ = chat_template_utils.render_jinja_template(
        conversations=[messages],
        tools=tools,
        chat_template=packaged_template.source,
        add_generation_prompt=add_generation_prompt,
        **variables,
    )

    assert rendered[0] == _render_with_template(packaged_template, case)


def _format_arguments(case: dict) -> dict:
    """Turn a render_chat case into ChatFormat.render arguments."""
    template_kwargs = {key: case[key] for key in ("thinking", "tools_ts_str") if key in case}
    return {
        "messages": case["messages"],
        "tools": case.get("tools"),
        "add_generation_prompt": case.get("add_generation_prompt", True),
        "chat_template_kwargs": template_kwargs,
    }


# ChatFormat rejects a system or user message with null content, which the template accepts.
CHAT_FORMAT_CONVERSATIONS = [case for case in CONVERSATIONS if case.id != "null_content"]


@pytest.mark.parametrize("case", CHAT_FORMAT_CONVERSATIONS)
def test_chat_format_paths_agree(case: dict, tmp_path: Path) -> None:
    (tmp_path / "chat_template.jinja").write_text(load_packaged_template().source, encoding="utf-8")
    arguments = _format_arguments(case)
    with_template = ChatFormat.from_dir(tmp_path).render(**arguments)
    builtin = ChatFormat().render(**arguments)

    assert with_template == builtin


def _random_message(rng: random.Random) -> dict:
    """Build a message with a random mix of optional and malformed fields (never a null reasoning_content)."""
    texts = ["hi", "", "héllo 世界 🙂", "a\nb", "{{ x }}", "None"]
    role = rng.choice(["system", "user", "assistant", "tool", "developer", "moderator"])
    message: dict = {"role": role}
    if rng.random() < 0.3:
        message["name"] = rng.choice([None, "", "bob"])
    if rng.random() < 0.9:
        parts = [
            {"type": rng.choice(["text", "image", "image_url", "video", "video_url", "other"]), "text": rng.choice(texts)}
            for _ in range(rng.randint(0, 3))
        ]
        message["content"] = rng.choice([None, rng.choice(texts), parts])
    if role == "assistant":
        if rng.random() < 0.5:
            message["reasoning_content"] = rng.choice(texts)
        if rng.random() < 0.6:
            calls = []
            for _ in range(rng.randint(0, 3)):
                arguments = rng.choice(['{"a": 1}', "", {"city": "Zürich", "n": [1, 2.5, None, True]}, {}])
                call = {"type": "function", "function": {"name": "f", "arguments": arguments}}
                if rng.random() < 0.8:
                    call["id"] = rng.choice(["functions.f:0", "call_abc", "3", ""])
                calls.append(call)
            message["tool_calls"] = calls
    if role == "tool" and rng.random() < 0.9:
        message["tool_call_id"] = rng.choice(["functions.f:0", "call_abc", None])
    return message


def test_random_conversations_match_template(packaged_template: JinjaChatTemplate) -> None:
    rng = random.Random(2025)
    for _ in range(300):
        case: dict = {"messages": [_random_message(rng) for _ in range(rng.randint(0, 6))]}
        case["add_generation_prompt"] = rng.random() < 0.5
        if rng.random() < 0.7:
            case["thinking"] = rng.choice([True, False, None, 0])
        if rng.random() < 0.3:
            case["tools"] = [WEATHER_TOOL]
            case["tools_ts_str"] = rng.choice([None, "", "# Tools\n\n"])

        assert render_chat(**case) == _render_with_template(packaged_template, case), case


def test_null_reasoning_content_quirk(packaged_template: JinjaChatTemplate) -> None:
    # The official template prints a null reasoning_content of a suffix turn as "None", and the
    # packaged template does too. The built-in renderer renders empty reasoning instead.
    messages = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "", "reasoning_content": None, "tool_calls": [_weather_call("functions.get_weather:0", "Paris")]},
    ]
    template_text = packaged_template.render(messages=messages, add_generation_prompt=False)
    builtin_text = render_chat(messages, add_generation_prompt=False)

    assert "<|im_middle|><think>None</think><|tool_calls_section_begin|>" in template_text
    assert "<|im_middle|><think></think><|tool_calls_section_begin|>" in builtin_text
    assert builtin_text == template_text.replace("<think>None</think>", "<think></think>")


def test_reasoning_alias_in_builtin_renderer() -> None:
    call = _weather_call("functions.get_weather:0", "Paris")
    with_alias = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "", "reasoning": "R", "tool_calls": [call]}]
    with_field = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "", "reasoning_content": "R", "tool_calls": [call]}]

    assert render_chat(with_alias) == render_chat(with_field)
    assert "<think>R</think>" in render_chat(with_alias)


def test_missing_arguments_raise_in_builtin_renderer() -> None:
    messages = [{"role": "assistant", "content": "", "tool_calls": [{"id": "x", "function": {"name": "f"}}]}]

    with pytest.raises(ValueError, match=r"messages\[0\]\.tool_calls\[0\]\.function\.arguments"):
        render_chat(messages)


# ---------------------------------------------------------------------------------------------
# Worked examples: literal output of the official K2.5 template for these conversations.
# ---------------------------------------------------------------------------------------------

SEARCH_FLIGHTS_TS = """# Tools

## functions
namespace functions {
// Search for flights between two airports.
type search_flights = (_: {
  // IATA code of the arrival airport
  destination: string,
  // IATA code of the departure airport
  // maxLength: 3, minLength: 3
  origin: string,
  // Passenger counts
  passengers: {
    // minimum: 1
    adults: number,
    // Children under 12
    children?: number
  },
  // Preferred airline codes
  airlines?: Array<string>,
  // Cabin class
  // Default: "economy"
  cabin?: "economy" | "business" | "first",
  // Upper price limit in USD
  // minimum: 0
  max_price?: number
}) => any;
}
"""

SEARCH_FLIGHTS_TOOL = {
    "type": "function",
    "function": {
        "name": "search_flights",
        "description": "Search for flights between two airports.",
        "parameters": {"type": "object", "properties": {}, "required": ["origin", "destination", "passengers"]},
    },
}

WORKED_EXAMPLES = [
    pytest.param(
        {
            "messages": [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "Hello"}],
            "add_generation_prompt": False,
        },
        "<|im_system|>system<|im_middle|>You are a helpful assistant.<|im_end|><|im_user|>user<|im_middle|>Hello<|im_end|>",
        id="message_frame",
    ),
    pytest.param(
        {"messages": [{"role": "user", "name": "bob", "content": "hi"}], "add_generation_prompt": False},
        "<|im_user|>bob<|im_middle|>hi<|im_end|>",
        id="name_label",
    ),
    pytest.param(
        {"messages": [{"role": "user", "content": None}], "add_generation_prompt": False},
        "<|im_user|>user<|im_middle|><|im_end|>",
        id="null_content",
    ),
    pytest.param(
        {
            "messages": [
                {"role": "system", "content": "SYS"},
                {"role": "user", "content": "Q1"},
                {"role": "assistant", "content": "A1", "reasoning_content": "R1"},
                {"role": "user", "content": "Q2"},
                {"role": "assistant", "content": "A2", "reasoning_content": "R2"},
                {"role": "user", "content": "Q3"},
            ]
        },
        "<|im_system|>system<|im_middle|>SYS<|im_end|><|im_user|>user<|im_middle|>Q1<|im_end|>"
        "<|im_assistant|>assistant<|im_middle|><think></think>A1<|im_end|><|im_user|>user<|im_middle|>Q2<|im_end|>"
        "<|im_assistant|>assistant<|im_middle|><think></think>A2<|im_end|><|im_user|>user<|im_middle|>Q3<|im_end|>"
        "<|im_assistant|>assistant<|im_middle|><think>",
        id="history_drops_reasoning",
    ),
    pytest.param(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Compare "},
                        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                        {"type": "text", "text": "and"},
                        {"type": "image_url", "image_url": {"url": "https://example.com/b.png"}},
                        {"type": "video_url", "video_url": {"url": "https://example.com/c.mp4"}},
                        {"type": "text", "text": "What changed?"},
                    ],
                }
            ],
            "add_generation_prompt": False,
        },
        "<|im_user|>user<|im_middle|>Compare <|media_begin|>image<|media_content|><|media_pad|><|media_end|>\n"
        "and<|media_begin|>image<|media_content|><|media_pad|><|media_end|>\n"
        "<|kimi_k25_video_placeholder|>\nWhat changed?<|im_end|>",
        id="multimodal_parts",
    ),
    pytest.param(
        {"messages": [{"role": "user", "content": "Hello"}], "thinking": True},
        "<|im_user|>user<|im_middle|>Hello<|im_end|><|im_assistant|>assistant<|im_middle|><think>",
        id="generation_prompt_thinking",
    ),
    pytest.param(
        {"messages": [{"role": "user", "content": "Hello"}], "thinking": False},
        "<|im_user|>user<|im_middle|>Hello<|im_end|><|im_assistant|>assistant<|im_middle|><think></think>",
        id="generation_prompt_instant",
    ),
    pytest.param(
        {
            "messages": [
                {"role": "system", "content": "You are a travel agent."},
                {"role": "user", "content": "Find flights SFO to NRT for 2 adults."},
                {
                    "role": "assistant",
                    "content": "Searching now.",
                    "reasoning_content": "Use search_flights.",
                    "tool_calls": [
                        {
                            "id": "functions.search_flights:0",
                            "type": "function",
                            "function": {
                                "name": "search_flights",
                                "arguments": '{"origin": "SFO", "destination": "NRT", "passengers": {"adults": 2}}',
                            },
                        }
                    ],
                },
                {
                    "role": "tool",
                    "name": "search_flights",
                    "tool_call_id": "functions.search_flights:0",
                    "content": '[{"flight": "NH7", "price": 1450}]',
                },
            ],
            "tools": [SEARCH_FLIGHTS_TOOL],
            "tools_ts_str": SEARCH_FLIGHTS_TS,
        },
        "<|im_system|>tool_declare<|im_middle|>" + SEARCH_FLIGHTS_TS + "<|im_end|>"
        "<|im_system|>system<|im_middle|>You are a travel agent.<|im_end|>"
        "<|im_user|>user<|im_middle|>Find flights SFO to NRT for 2 adults.<|im_end|>"
        "<|im_assistant|>assistant<|im_middle|><think>Use search_flights.</think>Searching now."
        "<|tool_calls_section_begin|><|tool_call_begin|>functions.search_flights:0<|tool_call_argument_begin|>"
        '{"origin": "SFO", "destination": "NRT", "passengers": {"adults": 2}}<|tool_call_end|><|tool_calls_section_end|>'
        "<|im_end|><|im_system|>search_flights<|im_middle|>## Return of functions.search_flights:0\n"
        '[{"flight": "NH7", "price": 1450}]<|im_end|><|im_assistant|>assistant<|im_middle|><think>',
        id="full_tool_step",
    ),
]


@pytest.mark.parametrize(("case", "expected"), WORKED_EXAMPLES)
def test_builtin_renders_worked_example(case: dict, expected: str) -> None:
    assert render_chat(**case) == expected


@pytest.mark.parametrize(("case", "expected"), WORKED_EXAMPLES)
def test_template_renders_worked_example(case: dict, expected: str, packaged_template: JinjaChatTemplate) -> None:
    assert _render_with_template(packaged_template, case) == expected


def test_json_tool_declaration_worked_example(packaged_template: JinjaChatTemplate) -> None:
    # The official code sorts tool keys before rendering; ChatFormat does that, so sort here too.
    case = {"messages": [{"role": "user", "content": "Weather?"}], "tools": [deep_sort_keys(WEATHER_TOOL)], "add_generation_prompt": False}
    expected = (
        '<|im_system|>tool_declare<|im_middle|>[{"function":{"description":"Get the current weather for a city.",'
        '"name":"get_weather","parameters":{"properties":{"city":{"description":"City name","type":"string"}},'
        '"required":["city"],"type":"object"}},"type":"function"}]<|im_end|>'
        "<|im_user|>user<|im_middle|>Weather?<|im_end|>"
    )

    assert render_chat(**case) == expected
    assert _render_with_template(packaged_template, case) == expected


def test_parallel_calls_worked_example(packaged_template: JinjaChatTemplate) -> None:
    messages = [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": "functions.get_weather:0", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
                {"id": "functions.get_weather:1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}},
            ],
        },
        {"role": "tool", "name": "get_weather", "tool_call_id": "functions.get_weather:0", "content": '{"temp": 18}'},
        {"role": "tool", "tool_call_id": "functions.get_weather:1", "content": '{"temp": 24}'},
    ]
    expected_tail = (
        "<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>"
        '{"city": "Paris"}<|tool_call_end|><|tool_call_begin|>functions.get_weather:1<|tool_call_argument_begin|>'
        '{"city": "Rome"}<|tool_call_end|><|tool_calls_section_end|><|im_end|>'
        "<|im_system|>get_weather<|im_middle|>## Return of functions.get_weather:0\n"
        '{"temp": 18}<|im_end|><|im_system|>tool<|im_middle|>## Return of functions.get_weather:1\n'
        '{"temp": 24}<|im_end|><|im_assistant|>assistant<|im_middle|><think>'
    )

    assert render_chat(messages).endswith(expected_tail)
    assert packaged_template.render(messages=messages, add_generation_prompt=True).endswith(expected_tail)


# ---------------------------------------------------------------------------------------------
# Loading checkpoint templates and the sandbox.
# ---------------------------------------------------------------------------------------------


def test_load_template_file(tmp_path: Path) -> None:
    (tmp_path / "chat_template.jinja").write_text("{{ bos_token }}{% for m in messages %}[{{ m.content }}]{% endfor %}")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": {"content": "[BOS]"}, "chat_template": "ignored"}))

    template = JinjaChatTemplate.from_checkpoint_dir(tmp_path)

    assert template is not None
    assert template.origin == str(tmp_path / "chat_template.jinja")
    assert template.render(messages=[{"content": "a"}, {"content": "b"}]) == "[BOS][a][b]"


def test_load_template_from_tokenizer_config(tmp_path: Path) -> None:
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages[0].content }}!"}))

    template = JinjaChatTemplate.from_checkpoint_dir(tmp_path)

    assert template is not None
    assert template.render(messages=[{"content": "hi"}]) == "hi!"


def test_load_template_list_form(tmp_path: Path) -> None:
    templates = [{"name": "tool_use", "template": "tools"}, {"name": "default", "template": "default"}]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": templates}))

    template = JinjaChatTemplate.from_checkpoint_dir(tmp_path)

    assert template is not None
    assert template.render() == "default"
    assert "entry 'default'" in template.origin


def test_load_template_list_without_default(tmp_path: Path) -> None:
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": [{"name": "rag", "template": "x"}]}))

    with pytest.raises(ChatTemplateError, match="no entry named 'default'"):
        JinjaChatTemplate.from_checkpoint_dir(tmp_path)


def test_load_template_absent(tmp_path: Path) -> None:
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "[BOS]"}))

    assert JinjaChatTemplate.from_checkpoint_dir(tmp_path) is None
    assert JinjaChatTemplate.from_checkpoint_dir(tmp_path / "missing") is None


def test_template_syntax_error_names_file(tmp_path: Path) -> None:
    path = tmp_path / "chat_template.jinja"
    path.write_text("line one\n{% if messages %}unclosed")

    with pytest.raises(ChatTemplateError) as error_info:
        JinjaChatTemplate.from_file(path)

    assert str(path) in str(error_info.value)
    assert "line 2" in str(error_info.value)


def test_template_render_error_names_file(tmp_path: Path) -> None:
    path = tmp_path / "chat_template.jinja"
    path.write_text("{{ messages[0].content.upper() }}")
    template = JinjaChatTemplate.from_file(path)

    with pytest.raises(ChatTemplateError) as error_info:
        template.render(messages=[{"role": "user"}])

    assert str(path) in str(error_info.value)


def test_raise_exception_is_input_error() -> None:
    template = JinjaChatTemplate("{{ raise_exception('roles must alternate') }}", "strict.jinja")

    with pytest.raises(ChatTemplateInputError, match="strict.jinja.*roles must alternate"):
        template.render(messages=[])


def test_sandbox_blocks_attribute_escape() -> None:
    template = JinjaChatTemplate("{{ ''.__class__ }}", "probe.jinja")

    with pytest.raises(ChatTemplateSecurityError, match="probe.jinja"):
        template.render()


def test_tojson_keeps_non_ascii() -> None:
    template = JinjaChatTemplate("{{ value | tojson }}|{{ value | tojson(indent=2) }}", "tojson.jinja")

    assert template.render(value={"a": "ü<>"}) == '{"a": "ü<>"}|{\n  "a": "ü<>"\n}'
