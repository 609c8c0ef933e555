"""Reasoning parser: whole-output split and the streaming parser, which must agree for any chunking."""

from __future__ import annotations

import random

import pytest

from kimi_k25.chat import ReasoningStreamParser, split_reasoning

SECTION = "<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>" \
    '{"city": "Paris"}<|tool_call_end|><|tool_calls_section_end|>'

SPLIT_CASES = [
    pytest.param("Let me think.</think>The answer is 4.", True, ("Let me think.", "The answer is 4."), id="reasoning_then_content"),
    pytest.param("<think>Let me think.</think>4", True, ("Let me think.", "4"), id="leading_think_stripped"),
    pytest.param("</think>Straight to the answer.", True, (None, "Straight to the answer."), id="end_at_very_start"),
    pytest.param("<think></think>Answer", True, (None, "Answer"), id="empty_think_block"),
    pytest.param("Only reasoning so far", True, ("Only reasoning so far", None), id="no_end_marker"),
    pytest.param("Reasoning done.</think>", True, ("Reasoning done.", None), id="nothing_after_end"),
    pytest.param("", True, (None, None), id="empty_output"),
    pytest.param("<think>", True, (None, None), id="only_think_marker"),
    pytest.param("<thin", True, ("<thin", None), id="partial_think_is_text"),
    pytest.param("Reasoning</thin", True, ("Reasoning</thin", None), id="partial_end_is_text"),
    pytest.param("I will call it." + SECTION, True, ("I will call it.", SECTION), id="tool_section_without_end"),
    pytest.param(SECTION, True, (None, SECTION), id="tool_section_at_start"),
    pytest.param(
        "Plan" + SECTION + "</think>late", True, ("Plan", SECTION + "</think>late"), id="tool_section_before_end",
    ),
    pytest.param(
        "Plan</think>Calling." + SECTION, True, ("Plan", "Calling." + SECTION), id="tool_section_after_end",
    ),
    pytest.param("a</think>b</think>c", True, ("a", "b</think>c"), id="only_first_end_counts"),
    pytest.param(" <think>a</think>b", True, (" <think>a", "b"), id="think_not_at_start_kept"),
    pytest.param("x<think>y</think>z", True, ("x<think>y", "z"), id="inner_think_kept"),
    pytest.param("Überlegung: 2·2=4 🙂</think>答案是 4。", True, ("Überlegung: 2·2=4 🙂", "答案是 4。"), id="unicode"),
    pytest.param("<<</think>>", True, ("<<", ">"), id="angle_brackets_near_marker"),
    pytest.param("a<|tool_calls</think>b", True, ("a<|tool_calls", "b"), id="partial_section_then_end"),
    pytest.param("Reasoning</think>Answer", False, (None, "Reasoning</think>Answer"), id="thinking_off"),
    pytest.param("<think>x", False, (None, "<think>x"), id="thinking_off_keeps_markers"),
    pytest.param("", False, (None, None), id="thinking_off_empty"),
]


@pytest.mark.parametrize(("text", "thinking", "expected"), SPLIT_CASES)
def test_split_reasoning(text: str, thinking: bool, expected: tuple[str | None, str | None]) -> None:
    assert split_reasoning(text, thinking) == expected


def _stream(chunks: list[str], thinking: bool) -> tuple[str | None, str | None]:
    """Feed ``chunks`` and return the joined reasoning and content, None when empty."""
    parser = ReasoningStreamParser(thinking)
    reasoning_parts, content_parts = [], []
    for chunk in chunks:
        reasoning_delta, content_delta = parser.feed(chunk)
        reasoning_parts.append(reasoning_delta)
        content_parts.append(content_delta)
    reasoning_delta, content_delta = parser.finish()
    reasoning_parts.append(reasoning_delta)
    content_parts.append(content_delta)
    return "".join(reasoning_parts) or None, "".join(content_parts) or None


def _random_chunks(text: str, rng: random.Random) -> list[str]:
    chunks, position = [], 0
    while position < len(text):
        size = rng.randint(0, 12)
        chunks.append(text[position : position + size])
        position += size
    return chunks


@pytest.mark.parametrize(("text", "thinking", "expected"), SPLIT_CASES)
def test_stream_whole_text(text: str, thinking: bool, expected: tuple[str | None, str | None]) -> None:
    assert _stream([text], thinking) == expected


@pytest.mark.parametrize(("text", "thinking", "expected"), SPLIT_CASES)
def test_stream_one_character_per_feed(text: str, thinking: bool, expected: tuple[str | None, str | None]) -> None:
    assert _stream(list(text), thinking) == expected


@pytest.mark.parametrize(("text", "thinking", "expected"), SPLIT_CASES)
def test_stream_random_chunks(text: str, thinking: bool, expected: tuple[str | None, str | None]) -> None:
    rng = random.Random(text)
    for _ in range(50):
        chunks = _random_chunks(text, rng)
        assert _stream(chunks, thinking) == expected, chunks


@pytest.mark.parametrize(("text", "thinking", "expected"), SPLIT_CASES)
def test_stream_every_two_way_cut(text: str, thinking: bool, expected: tuple[str | None, str | None]) -> None:
    for cut in range(len(text) + 1):
        chunks = [text[:cut], text[cut:]]
        assert _stream(chunks, thinking) == expected, chunks


def test_stream_holds_partial_end_marker() -> None:
    parser = ReasoningStreamParser(thinking=True)

    assert parser.feed("Because 2+2</thi") == ("Because 2+2", "")
    assert parser.feed("nk>Four") == ("", "Four")
    assert parser.feed(" and more") == ("", " and more")
    assert parser.finish() == ("", "")


def test_stream_releases_false_alarm() -> None:
    parser = ReasoningStreamParser(thinking=True)

    assert parser.feed("a </") == ("a ", "")
    assert parser.feed("b> c") == ("</b> c", "")


def test_stream_finish_releases_partial_marker() -> None:
    parser = ReasoningStreamParser(thinking=True)

    assert parser.feed("cut off at </thi") == ("cut off at ", "")
    assert parser.finish() == ("</thi", "")


def test_stream_holds_leading_think() -> None:
    parser = ReasoningStreamParser(thinking=True)

    assert parser.feed("<th") == ("", "")
    assert parser.feed("ink>") == ("", "")
    assert parser.feed("Hmm") == ("Hmm", "")


def test_stream_tool_section_reaches_content_whole() -> None:
    parser = ReasoningStreamParser(thinking=True)

    assert parser.feed("Call it.<|tool_calls") == ("Call it.", "")
    assert parser.feed("_section_begin|><|tool_call_begin|>") == ("", "<|tool_calls_section_begin|><|tool_call_begin|>")


def test_stream_thinking_off_passes_through() -> None:
    parser = ReasoningStreamParser(thinking=False)

    assert parser.feed("<think>") == ("", "<think>")
    assert parser.feed("x</think>y") == ("", "x</think>y")
    assert parser.finish() == ("", "")
