"""Tool-call parsing of K2.5 completions: whole outputs, streams, and their agreement."""

from __future__ import annotations

import json
import random

import pytest

from kimi_k25.chat.tool_parser import (
    ToolCallParseResult,
    ToolCallStreamEnd,
    ToolCallStreamParser,
    count_prior_tool_calls,
    parse_tool_calls,
)

SECTION_BEGIN = "<|tool_calls_section_begin|>"
SECTION_END = "<|tool_calls_section_end|>"
CALL_BEGIN = "<|tool_call_begin|>"
ARGUMENT_BEGIN = "<|tool_call_argument_begin|>"
CALL_END = "<|tool_call_end|>"
LEGACY_SECTION_BEGIN = "<|tool_call_section_begin|>"
LEGACY_SECTION_END = "<|tool_call_section_end|>"
MARKERS = (SECTION_BEGIN, SECTION_END, CALL_BEGIN, ARGUMENT_BEGIN, CALL_END, LEGACY_SECTION_BEGIN, LEGACY_SECTION_END)


def function_tool(name: str, *parameter_names: str) -> dict:
    properties = {parameter: {"type": "string"} for parameter in parameter_names}
    return {"type": "function", "function": {"name": name, "parameters": {"type": "object", "properties": properties}}}


WEATHER_TOOLS = [function_tool("get_weather", "city"), function_tool("get_time", "zone")]


def call(call_id: str, arguments: str) -> str:
    return CALL_BEGIN + call_id + ARGUMENT_BEGIN + arguments + CALL_END


def section(*calls: str) -> str:
    return SECTION_BEGIN + "".join(calls) + SECTION_END


def tool_call(call_id: str, name: str, arguments: str) -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


# Streaming helpers.


def stream(chunks: list[str], tools: list[dict] | None = None, index_offset: int = 0) -> tuple[list[dict], ToolCallStreamEnd]:
    parser = ToolCallStreamParser(tools, index_offset=index_offset)
    deltas = [delta for chunk in chunks for delta in parser.feed(chunk)]
    end = parser.finish()
    return deltas + end.deltas, end


def join_deltas(deltas: list[dict]) -> tuple[str | None, list[dict]]:
    """Accumulate deltas the way an OpenAI client does: content text, and tool calls by index."""
    content_parts = []
    calls: list[dict] = []
    for delta in deltas:
        assert set(delta) in ({"content"}, {"tool_calls"}), delta
        if "content" in delta:
            assert delta["content"], "empty content deltas are never sent"
            content_parts.append(delta["content"])
            continue
        for call_delta in delta["tool_calls"]:
            index = call_delta["index"]
            if "id" in call_delta:
                assert index == len(calls), "a call's first delta comes before its fragments"
                assert call_delta["type"] == "function"
                assert call_delta["function"]["arguments"] == ""
                calls.append(tool_call(call_delta["id"], call_delta["function"]["name"], ""))
            else:
                assert set(call_delta) == {"index", "function"}
                assert set(call_delta["function"]) == {"arguments"}
                calls[index]["function"]["arguments"] += call_delta["function"]["arguments"]
    return ("".join(content_parts) or None), calls


def assert_stream_matches_whole(text: str, chunks: list[str], tools: list[dict] | None, index_offset: int = 0) -> None:
    assert "".join(chunks) == text
    expected = parse_tool_calls(text, tools, index_offset=index_offset)
    deltas, end = stream(chunks, tools, index_offset)
    content, calls = join_deltas(deltas)
    unknown = end.unknown_function_calls
    if end.incomplete_call_index is not None:
        assert end.truncated
        assert end.incomplete_call_index == len(calls) - 1
        calls = calls[:-1]
        unknown = [index for index in unknown if index != end.incomplete_call_index]
    assert end.tool_call_count == len(calls) + (end.incomplete_call_index is not None)

    assert content == expected.content, (text, chunks)
    assert calls == expected.tool_calls, (text, chunks)
    assert end.tool_section_found == expected.tool_section_found
    assert end.truncated == expected.truncated
    assert end.error == expected.error
    assert unknown == expected.unknown_function_calls
    assert end.invalid_arguments_calls == expected.invalid_arguments_calls
    assert end.skipped_calls == expected.skipped_calls


def token_like_chunks(text: str, rng: random.Random) -> list[str]:
    """Split like a detokenizer: each marker whole, plain text in pieces of 1 to 4 characters."""
    chunks = []
    position = 0
    while position < len(text):
        marker = next((m for m in MARKERS if text.startswith(m, position)), None)
        size = len(marker) if marker else rng.randint(1, 4)
        chunks.append(text[position : position + size])
        position += size
    return chunks


def group_chunks(chunks: list[str], rng: random.Random, max_group: int) -> list[str]:
    grouped = []
    while chunks:
        size = rng.randint(1, max_group)
        grouped.append("".join(chunks[:size]))
        chunks = chunks[size:]
    return grouped


def chunkings(text: str, rng: random.Random) -> list[list[str]]:
    tokens = token_like_chunks(text, rng)
    return [
        list(text),
        tokens,
        group_chunks(tokens, rng, 5),
        group_chunks(list(text), rng, 40),
        [text],
    ]


# Whole-output parsing.


def test_content_and_parallel_calls() -> None:
    text = "I'll check both." + section(
        call("functions.get_weather:2", '{"city": "Paris"}'), call("functions.get_weather:3", '{"city": "Rome"}')
    )

    result = parse_tool_calls(text, WEATHER_TOOLS)

    assert result == ToolCallParseResult(
        content="I'll check both.",
        tool_calls=[
            tool_call("functions.get_weather:2", "get_weather", '{"city": "Paris"}'),
            tool_call("functions.get_weather:3", "get_weather", '{"city": "Rome"}'),
        ],
        tool_section_found=True,
    )


def test_no_section_is_content() -> None:
    result = parse_tool_calls("The weather is fine.", WEATHER_TOOLS)

    assert result == ToolCallParseResult(content="The weather is fine.")


@pytest.mark.parametrize("text", ["", "  \n ", "\n" + section(call("functions.get_time:0", "{}"))])
def test_empty_or_whitespace_content_is_none(text: str) -> None:
    assert parse_tool_calls(text, WEATHER_TOOLS).content is None


def test_whitespace_between_calls() -> None:
    text = SECTION_BEGIN + "\n " + call("functions.get_weather:0", "{}") + "\n\n" + call("functions.get_time:1", "{}") + " \n" + SECTION_END

    result = parse_tool_calls(text, WEATHER_TOOLS)

    assert [c["function"]["name"] for c in result.tool_calls] == ["get_weather", "get_time"]
    assert result.error is None


def test_noise_between_calls_dropped() -> None:
    text = SECTION_BEGIN + "(no content)" + call("functions.get_time:0", "{}") + "junk" + SECTION_END

    result = parse_tool_calls(text, WEATHER_TOOLS)

    assert result.content is None
    assert result.tool_calls == [tool_call("functions.get_time:0", "get_time", "{}")]


@pytest.mark.parametrize(
    "arguments",
    [
        '{"expr": "a < b | c > d", "html": "<b>|</b>"}',
        '{"nested": {"list": [1, {"k": "}"}]}, "q": "\\"quoted\\""}',
        '{\n  "code": "def f():\\n    return 1",\n  "lines": 2\n}',
        '{"almost_marker": "<|tool_call_", "pipe": "<|not a marker|>"}',
        "{}",
    ],
    ids=["angle_and_pipe", "braces_and_quotes", "multiline", "partial_marker_text", "empty_object"],
)
def test_arguments_kept_verbatim(arguments: str) -> None:
    result = parse_tool_calls(section(call("functions.run:0", arguments)), [function_tool("run")])

    assert result.tool_calls == [tool_call("functions.run:0", "run", arguments)]
    assert result.invalid_arguments_calls == []


def test_whitespace_around_id_and_arguments_stripped() -> None:
    text = section(CALL_BEGIN + "\n  functions.get_weather:0 \n" + ARGUMENT_BEGIN + '\n {"city": "Oslo"}\n ' + CALL_END)

    result = parse_tool_calls(text, WEATHER_TOOLS)

    assert result.tool_calls == [tool_call("functions.get_weather:0", "get_weather", '{"city": "Oslo"}')]


@pytest.mark.parametrize(
    "name", ["search-documents", "mcp__portal__search-documents", "v2.lookup", "tool42", "a.b-c.d9"]
)
def test_names_with_hyphens_dots_digits(name: str) -> None:
    result = parse_tool_calls(section(call(f"functions.{name}:0", "{}")), [function_tool(name)])

    assert result.tool_calls == [tool_call(f"functions.{name}:0", name, "{}")]
    assert result.unknown_function_calls == []


@pytest.mark.parametrize(
    ("call_id", "tools", "name"),
    [
        pytest.param("functions.a.b:0", [function_tool("a.b")], "a.b", id="declared_whole_name"),
        pytest.param("functions.a.b:0", [function_tool("b")], "b", id="declared_last_segment"),
        pytest.param("functions.x.a.b:0", [function_tool("a.b"), function_tool("b")], "a.b", id="longest_declared_suffix"),
        pytest.param("functions.a.b:0", None, "a.b", id="no_tools_keeps_whole"),
        pytest.param("functions.a.b:0", [function_tool("c")], "a.b", id="undeclared_keeps_whole"),
        pytest.param("default_api.get_time:0", WEATHER_TOOLS, "get_time", id="unprefixed_dotted"),
    ],
)
def test_dotted_name_rule(call_id: str, tools: list[dict] | None, name: str) -> None:
    result = parse_tool_calls(section(call(call_id, "{}")), tools)

    assert result.tool_calls[0]["function"]["name"] == name


@pytest.mark.parametrize(
    ("call_id", "expected_id"),
    [
        pytest.param("functions.get_time:7", "functions.get_time:7", id="model_id_kept"),
        pytest.param("get_time:7", "functions.get_time:4", id="unprefixed_synthesized"),
        pytest.param("functions.get_time", "functions.get_time:4", id="no_index_declared_name"),
        pytest.param("get_time", "functions.get_time:4", id="bare_declared_name"),
    ],
)
def test_returned_id(call_id: str, expected_id: str) -> None:
    text = section(call("functions.get_weather:3", "{}"), call(call_id, "{}"))

    result = parse_tool_calls(text, WEATHER_TOOLS, index_offset=3)

    assert result.tool_calls[1]["id"] == expected_id
    assert result.tool_calls[1]["function"]["name"] == "get_time"


def test_synthesized_ids_count_across_conversation() -> None:
    text = section(call("get_weather:0", "{}"), call("get_time:1", "{}"))

    result = parse_tool_calls(text, WEATHER_TOOLS, index_offset=5)

    assert [c["id"] for c in result.tool_calls] == ["functions.get_weather:5", "functions.get_time:6"]


def test_count_prior_tool_calls() -> None:
    messages = [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "a"}, {"id": "b"}]},
        {"role": "tool", "tool_call_id": "a", "content": "1"},
        {"role": "assistant", "content": "x"},
        {"role": "assistant", "tool_calls": [{"id": "c"}]},
    ]

    assert count_prior_tool_calls(messages) == 3


@pytest.mark.parametrize(
    ("arguments", "tools", "name"),
    [
        pytest.param('{"zone": "UTC"}', [function_tool("get_time", "zone")], "get_time", id="single_tool"),
        pytest.param("not json", [function_tool("get_time", "zone")], "get_time", id="single_tool_any_arguments"),
        pytest.param('{"zone": "UTC"}', WEATHER_TOOLS, "get_time", id="unique_key_match"),
    ],
)
def test_bare_counter_id_inferred(arguments: str, tools: list[dict], name: str) -> None:
    result = parse_tool_calls(section(call(" 3 ", arguments)), tools, index_offset=2)

    assert result.tool_calls == [tool_call(f"functions.{name}:2", name, arguments)]


@pytest.mark.parametrize(
    ("arguments", "tools"),
    [
        pytest.param("{}", WEATHER_TOOLS, id="every_tool_matches"),
        pytest.param('{"other": 1}', WEATHER_TOOLS, id="no_tool_matches"),
        pytest.param('{"city": "Paris"', WEATHER_TOOLS, id="invalid_json"),
        pytest.param('{"city": "Paris"}', None, id="no_tools"),
    ],
)
def test_bare_counter_id_ambiguous_skipped(arguments: str, tools: list[dict] | None) -> None:
    text = section(call("3", arguments), call("functions.get_time:4", "{}"))

    result = parse_tool_calls(text, tools)

    assert result.skipped_calls == ["3"]
    assert result.tool_calls == [tool_call("functions.get_time:4", "get_time", "{}")]


def test_unreadable_id_skipped() -> None:
    result = parse_tool_calls(section(call("call_abc123", "{}")), WEATHER_TOOLS)

    assert result.tool_calls == []
    assert result.skipped_calls == ["call_abc123"]


def test_legacy_singular_section_markers() -> None:
    text = "Hi" + LEGACY_SECTION_BEGIN + call("functions.get_time:0", "{}") + LEGACY_SECTION_END

    result = parse_tool_calls(text, WEATHER_TOOLS)

    assert result.content == "Hi"
    assert result.tool_calls == [tool_call("functions.get_time:0", "get_time", "{}")]


def test_bare_call_without_section() -> None:
    text = "Checking." + call("functions.get_time:0", '{"zone": "UTC"}') + "\n" + call("functions.get_weather:1", "{}")

    result = parse_tool_calls(text, WEATHER_TOOLS)

    assert result.content == "Checking."
    assert result.tool_section_found
    assert [c["id"] for c in result.tool_calls] == ["functions.get_time:0", "functions.get_weather:1"]


def test_empty_section() -> None:
    result = parse_tool_calls("Nothing to call." + SECTION_BEGIN + SECTION_END, WEATHER_TOOLS)

    assert result == ToolCallParseResult(content="Nothing to call.", tool_section_found=True)


def test_text_after_section_dropped() -> None:
    text = section(call("functions.get_time:0", "{}")) + "trailing words" + section(call("functions.get_weather:1", "{}"))

    result = parse_tool_calls(text, WEATHER_TOOLS)

    assert result.content is None
    assert len(result.tool_calls) == 1
    assert result.error is None


@pytest.mark.parametrize(
    ("tail", "calls_kept"),
    [
        pytest.param(CALL_BEGIN + "functions.get_weather:1" + ARGUMENT_BEGIN + '{"city": "Par', 1, id="inside_arguments"),
        pytest.param(CALL_BEGIN + "functions.get_wea", 1, id="inside_id"),
        pytest.param(CALL_BEGIN + "functions.get_weather:1" + ARGUMENT_BEGIN + "{}<|tool_call_e", 1, id="inside_end_marker"),
        pytest.param("<|tool_call_be", 1, id="inside_begin_marker"),
    ],
)
def test_cut_off_section(tail: str, calls_kept: int) -> None:
    text = "Looking." + SECTION_BEGIN + call("functions.get_time:0", "{}") + tail

    result = parse_tool_calls(text, WEATHER_TOOLS)

    assert result.content == "Looking."
    assert len(result.tool_calls) == calls_kept
    assert result.truncated == tail.startswith(CALL_BEGIN)
    assert result.error is None


def test_cut_off_between_calls_is_complete() -> None:
    result = parse_tool_calls(SECTION_BEGIN + call("functions.get_time:0", "{}"), WEATHER_TOOLS)

    assert len(result.tool_calls) == 1
    assert not result.truncated


def test_unknown_function_kept_and_marked() -> None:
    text = section(call("functions.get_time:0", "{}"), call("functions.delete_everything:1", "{}"))

    result = parse_tool_calls(text, WEATHER_TOOLS)

    assert result.tool_calls[1] == tool_call("functions.delete_everything:1", "delete_everything", "{}")
    assert result.unknown_function_calls == [1]


def test_unknown_function_not_marked_without_tools() -> None:
    assert parse_tool_calls(section(call("functions.anything:0", "{}")), None).unknown_function_calls == []


@pytest.mark.parametrize("arguments", ['{"city": "Paris"', "city=Paris", '["Paris"]', '"Paris"', ""])
def test_invalid_arguments_kept_and_marked(arguments: str) -> None:
    text = section(call("functions.get_weather:0", arguments), call("functions.get_time:1", "{}"))

    result = parse_tool_calls(text, WEATHER_TOOLS)

    assert result.tool_calls[0]["function"]["arguments"] == arguments
    assert result.invalid_arguments_calls == [0]


@pytest.mark.parametrize(
    ("before", "marker", "after", "content", "calls", "place"),
    [
        pytest.param(
            "Hi" + SECTION_BEGIN + CALL_BEGIN + 'functions.get_time:0{"zone": "UTC"}',
            CALL_END,
            SECTION_END,
            'Hifunctions.get_time:0{"zone": "UTC"}',
            0,
            "in a tool call id",
            id="missing_argument_begin",
        ),
        pytest.param(
            "Done.",
            CALL_END,
            "more" + section(call("functions.get_time:0", "{}")),
            "Done.morefunctions.get_time:0{}",
            0,
            "before any tool call section",
            id="stray_marker_in_content",
        ),
        pytest.param(
            SECTION_BEGIN + call("functions.get_time:0", "{}"),
            ARGUMENT_BEGIN,
            "{}" + SECTION_END,
            "{}",
            1,
            "between tool calls",
            id="argument_begin_between_calls",
        ),
        pytest.param(
            SECTION_BEGIN + CALL_BEGIN + "functions.get_time:0" + ARGUMENT_BEGIN + '{"zone": "UTC"}',
            SECTION_END,
            "after",
            "after",
            1,
            "in tool call arguments",
            id="missing_call_end",
        ),
        pytest.param(
            SECTION_BEGIN,
            SECTION_BEGIN,
            call("functions.get_time:0", "{}"),
            "functions.get_time:0{}",
            0,
            "between tool calls",
            id="doubled_section_begin",
        ),
    ],
)
def test_malformed_output_falls_back_to_content(
    before: str, marker: str, after: str, content: str, calls: int, place: str
) -> None:
    result = parse_tool_calls(before + marker + after, WEATHER_TOOLS)

    assert result.content == content
    assert len(result.tool_calls) == calls
    assert result.error is not None
    assert result.error.startswith(f"unexpected {marker} at offset {len(before)} {place}")


def test_malformed_call_keeps_arguments_so_far() -> None:
    text = SECTION_BEGIN + CALL_BEGIN + "functions.get_time:0" + ARGUMENT_BEGIN + '{"zone": "UTC"}' + CALL_BEGIN + "x"

    result = parse_tool_calls(text, WEATHER_TOOLS)

    assert result.tool_calls == [tool_call("functions.get_time:0", "get_time", '{"zone": "UTC"}')]
    assert result.content == "x"


# Streaming.


def test_stream_first_delta_then_fragments() -> None:
    parser = ToolCallStreamParser(WEATHER_TOOLS, index_offset=4)

    assert parser.feed("Sure.") == [{"content": "Sure."}]
    assert parser.feed(SECTION_BEGIN + CALL_BEGIN + "functions.get_weather:4") == []
    assert parser.feed(ARGUMENT_BEGIN + '{"ci') == [
        {"tool_calls": [{"index": 0, "id": "functions.get_weather:4", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"ci'}}]},
    ]
    assert parser.feed('ty": "Oslo"}') == [{"tool_calls": [{"index": 0, "function": {"arguments": 'ty": "Oslo"}'}}]}]
    assert parser.feed(CALL_END + SECTION_END + "ignored") == []
    end = parser.finish()
    assert end == ToolCallStreamEnd(
        deltas=[],
        tool_section_found=True,
        tool_call_count=1,
        incomplete_call_index=None,
        truncated=False,
        error=None,
        unknown_function_calls=[],
        invalid_arguments_calls=[],
        skipped_calls=[],
    )


def test_stream_holds_partial_marker_in_content() -> None:
    parser = ToolCallStreamParser(WEATHER_TOOLS)

    assert parser.feed("Let me look <|tool") == [{"content": "Let me look "}]
    assert parser.feed("_calls_section_begin|>") == []


def test_stream_releases_text_that_is_no_marker() -> None:
    parser = ToolCallStreamParser(WEATHER_TOOLS)

    assert parser.feed("a <|tool") == [{"content": "a "}]
    assert parser.feed("box|> b") == [{"content": "<|toolbox|> b"}]
    assert parser.feed(" <|tool_call") == [{"content": " "}]
    assert parser.finish().deltas == [{"content": "<|tool_call"}]


def test_stream_holds_leading_whitespace() -> None:
    parser = ToolCallStreamParser(WEATHER_TOOLS)

    assert parser.feed("\n\n") == []
    assert parser.feed("Hi") == [{"content": "\n\nHi"}]


def test_stream_long_argument_is_progressive() -> None:
    value = "".join(random.Random(7).choice("ab <|{}\"\n") for _ in range(50_000))
    arguments = json.dumps({"text": value})
    parser = ToolCallStreamParser(WEATHER_TOOLS)
    parser.feed(SECTION_BEGIN + CALL_BEGIN + "functions.get_weather:0" + ARGUMENT_BEGIN)

    sent = 0
    for start in range(0, len(arguments), 1000):
        chunk = arguments[start : start + 1000]
        for delta in parser.feed(chunk):
            sent += len(delta["tool_calls"][0]["function"]["arguments"])
        received = start + len(chunk)
        assert received - sent <= len(CALL_END), "only a possible end marker or whitespace is held back"

    parser.feed(CALL_END + SECTION_END)
    assert sent == len(arguments)
    assert parser.finish().invalid_arguments_calls == []


def test_stream_cut_off_inside_arguments() -> None:
    chunks = ["Hm.", SECTION_BEGIN, CALL_BEGIN, "functions.get_time:0", ARGUMENT_BEGIN, "{}", CALL_END]
    chunks += [CALL_BEGIN, "functions.get_weather:1", ARGUMENT_BEGIN, '{"city": ', "\"Li  ", "<|tool_ca"]

    deltas, end = stream(chunks, WEATHER_TOOLS)
    content, calls = join_deltas(deltas)

    assert content == "Hm."
    assert calls[1] == tool_call("functions.get_weather:1", "get_weather", '{"city": "Li')
    assert end.truncated
    assert end.incomplete_call_index == 1
    assert end.tool_call_count == 2
    assert end.invalid_arguments_calls == []


def test_stream_cut_off_inside_id_sends_nothing() -> None:
    deltas, end = stream([SECTION_BEGIN + CALL_BEGIN + "functions.get_ti"], WEATHER_TOOLS)

    assert deltas == []
    assert end.truncated
    assert end.incomplete_call_index is None


def test_stream_bare_counter_id_held_until_call_end() -> None:
    parser = ToolCallStreamParser(WEATHER_TOOLS, index_offset=1)

    assert parser.feed(SECTION_BEGIN + CALL_BEGIN + "0" + ARGUMENT_BEGIN + '{"zone": ') == []
    assert parser.feed('"UTC"}' + CALL_END) == [
        {"tool_calls": [{"index": 0, "id": "functions.get_time:1", "type": "function", "function": {"name": "get_time", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"zone": "UTC"}'}}]},
    ]


def test_stream_feed_after_finish_raises() -> None:
    parser = ToolCallStreamParser(None)
    parser.finish()

    with pytest.raises(RuntimeError, match="new ToolCallStreamParser"):
        parser.feed("x")


def test_stream_parsers_are_independent() -> None:
    first = ToolCallStreamParser(WEATHER_TOOLS)
    second = ToolCallStreamParser(WEATHER_TOOLS, index_offset=9)

    first.feed(SECTION_BEGIN + CALL_BEGIN + "get_time:0")
    assert second.feed("plain text") == [{"content": "plain text"}]
    assert first.feed(ARGUMENT_BEGIN)[0]["tool_calls"][0]["id"] == "functions.get_time:0"
    assert second.finish().tool_section_found is False


FIXED_OUTPUTS = [
    "I'll check both." + section(call("functions.get_weather:2", '{"city": "Paris"}'), call("functions.get_weather:3", '{"city": "Rome"}')),
    "Plain answer with <b>tags</b> | pipes and <|not markers|>.",
    "\n\n" + SECTION_BEGIN + "\n" + call(" functions.get_time:0\n", ' {"zone": "UTC"} ') + "\n" + SECTION_END + "<|im_end|>",
    LEGACY_SECTION_BEGIN + call("get_weather:0", "{}") + call("1", '{"zone": "CET"}') + LEGACY_SECTION_END,
    "Bare." + call("functions.get_time:0", "{}") + call("functions.unknown:1", "not json"),
    "Cut " + SECTION_BEGIN + call("functions.get_time:0", "{}") + CALL_BEGIN + "functions.get_weather:1" + ARGUMENT_BEGIN + '{"city": "Ber',
    "Cut in marker" + SECTION_BEGIN + call("functions.get_time:0", '{"zone": "<|tool_call_"}') + "<|tool_call_be",
    "Bad" + SECTION_BEGIN + CALL_BEGIN + "functions.get_time:0" + CALL_END + "tail <|tool" + SECTION_END,
    SECTION_BEGIN + call("functions.get_time:0", "{}") + ARGUMENT_BEGIN + "x" + CALL_END,
    "<|tool_call_",
    "",
]


@pytest.mark.parametrize("text", FIXED_OUTPUTS)
def test_stream_matches_whole_fixed(text: str) -> None:
    rng = random.Random(text)
    for chunks in chunkings(text, rng):
        assert_stream_matches_whole(text, chunks, WEATHER_TOOLS, index_offset=2)


RANDOM_NAMES = ["get_weather", "get_time", "search-docs", "a.b", "ns.get_time", "tool9", "unknown_fn"]
RANDOM_TOOLS = [function_tool("get_weather", "city"), function_tool("get_time", "zone"), function_tool("search-docs", "q"), function_tool("a.b")]
RANDOM_ARGUMENTS = [
    '{"city": "Paris"}',
    "{}",
    '{"q": "a < b | c > d", "n": {"x": [1, 2]}}',
    '{"text": "line1\\nline2"}',
    '{\n  "zone": "UTC"\n}',
    '{"s": "<|tool_call_"}',
    '{"s": "<|im_end|> and </think>"}',
    "not json",
    '{"city": "Zürich 🙂"}',
    " ",
]
RANDOM_CONTENT = ["", "Let me check.", "  ", "héllo 世界 <b>|</b> ", "a <| b", "x<|tool", "\n"]


def random_output(rng: random.Random) -> str:
    """Build a completion as a list of pieces, then maybe cut it off or misplace a marker."""
    pieces = [rng.choice(RANDOM_CONTENT)]
    bare = rng.random() < 0.15
    if rng.random() < 0.85:
        if not bare:
            pieces.append(rng.choice([SECTION_BEGIN, SECTION_BEGIN, LEGACY_SECTION_BEGIN]))
        for index in range(rng.randint(0, 3)):
            if index or not bare:
                pieces.append(rng.choice(["", "", "\n", " \n ", "junk"]))
            name = rng.choice(RANDOM_NAMES)
            call_id = rng.choice([f"functions.{name}:{index}", f"{name}:{index}", str(index)])
            call_id = rng.choice(["", " ", "\n"]) + call_id + rng.choice(["", "\n"])
            pieces += [CALL_BEGIN, call_id, ARGUMENT_BEGIN, rng.choice(RANDOM_ARGUMENTS), CALL_END]
        if not bare:
            pieces.append(rng.choice([SECTION_END, SECTION_END, LEGACY_SECTION_END, ""]))
        pieces.append(rng.choice(["", "<|im_end|>", "after text"]))

    mutation = rng.random()
    if mutation < 0.15:
        pieces.insert(rng.randint(0, len(pieces)), rng.choice(MARKERS))
    elif mutation < 0.25:
        marker_positions = [i for i, piece in enumerate(pieces) if piece in MARKERS]
        if marker_positions:
            del pieces[rng.choice(marker_positions)]
    text = "".join(pieces)
    if rng.random() < 0.25:
        text = text[: rng.randint(0, len(text))]
    return text


def test_stream_matches_whole_random() -> None:
    rng = random.Random(20250131)
    for _ in range(400):
        text = random_output(rng)
        tools = rng.choice([RANDOM_TOOLS, RANDOM_TOOLS, None])
        for chunks in chunkings(text, rng):
            assert_stream_matches_whole(text, chunks, tools, index_offset=rng.randint(0, 3))


def test_markers_never_leak() -> None:
    rng = random.Random(99)
    for _ in range(200):
        text = random_output(rng)
        result = parse_tool_calls(text, RANDOM_TOOLS)
        deltas, _ = stream(token_like_chunks(text, rng), RANDOM_TOOLS)
        content, calls = join_deltas(deltas)
        texts = [result.content or "", content or ""] + [c["function"]["arguments"] for c in result.tool_calls + calls]
        for marker in MARKERS:
            assert not any(marker in piece for piece in texts), text


def test_parse_never_raises_on_random_text() -> None:
    rng = random.Random(5)
    alphabet = ["a", " ", "\n", "{", "}", '"', "<", "|", ":", "0", ".", *MARKERS, "<|tool_call"]
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        assert_stream_matches_whole(text, token_like_chunks(text, rng), RANDOM_TOOLS)
