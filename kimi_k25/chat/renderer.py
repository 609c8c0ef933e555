"""Built-in Kimi K2.5 prompt renderer in plain Python.

It follows the rules of the official checkpoint's ``chat_template.jinja`` and produces the same
text byte for byte. This package's ``chat_template.jinja`` is the Jinja form of the same rules,
and the tests compare the two on a shared table of conversations. One difference is deliberate:
a null ``reasoning_content`` renders as empty reasoning here, but as the text ``None`` in the
template.

Prompt layout:

    [<|im_system|>tool_declare<|im_middle|>DECLARATION<|im_end|>]
    for each message: HEADER LABEL <|im_middle|> BODY <|im_end|>
    [<|im_assistant|>assistant<|im_middle|><think>]      (or <think></think> in instant mode)

HEADER is ``<|im_user|>`` for user, ``<|im_assistant|>`` for assistant and ``<|im_system|>`` for
every other role. LABEL is the message's ``name`` when non-empty, else its role.
"""

from __future__ import annotations

import json
from typing import Any

from kimi_k25.chat import tokens

# Stands in for a key the message lacks, which Jinja renders as empty text (unlike None).
_MISSING = object()


def render_chat(
    messages: list[dict],
    *,
    tools: list[dict] | None = None,
    tools_ts_str: str | None = None,
    thinking: bool = True,
    add_generation_prompt: bool = True,
) -> str:
    """Render OpenAI-style messages into the K2.5 prompt text.

    Args:
        messages: dicts with ``role``, ``content`` (string, null or a list of parts), and optionally
            ``name``, ``tool_calls``, ``tool_call_id`` and ``reasoning_content``. ``reasoning``
            is accepted in place of ``reasoning_content`` because vLLM clients send that name.
        tools: OpenAI tool definitions; when non-empty, a tool_declare message comes first.
        tools_ts_str: the TypeScript-style tool declaration; when empty, the tools are declared as
            compact JSON instead.
        thinking: only ``False`` selects instant mode (``<think></think>`` everywhere), as in the
            template, where any other value keeps thinking on.
        add_generation_prompt: append the header of the assistant turn to generate.

    Messages are not validated here (``ChatFormat`` does that). Malformed fields render the way
    the template renders them, except a tool call without ``function.arguments``, which raises
    ValueError because the template fails on it too.
    """
    instant = thinking is False
    parts: list[str] = []

    if tools:
        parts.append(_render_tool_declaration(tools, tools_ts_str))

    last_answer_index = _find_last_answer_index(messages)
    for index, message in enumerate(messages):
        in_history = index <= last_answer_index
        parts.append(_render_message(message, index, replay_reasoning=not (in_history or instant)))

    if add_generation_prompt:
        parts.append(tokens.IM_ASSISTANT + "assistant" + tokens.IM_MIDDLE)
        parts.append(tokens.THINK_EMPTY if instant else tokens.THINK_BEGIN)
    return "".join(parts)


def _render_tool_declaration(tools: list[dict], tools_ts_str: str | None) -> str:
    if tools_ts_str:
        declaration = str(tools_ts_str)
    else:
        declaration = json.dumps(tools, ensure_ascii=False, separators=(",", ":"))
    return tokens.IM_SYSTEM + "tool_declare" + tokens.IM_MIDDLE + declaration + tokens.IM_END


def _find_last_answer_index(messages: list[dict]) -> int:
    """Return the index of the last assistant message without tool calls, or -1.

    Messages up to this index are history, whose reasoning is dropped. Later assistant messages
    are the tool-calling steps of the turn in progress and replay their reasoning.
    """
    last_answer_index = -1
    for index, message in enumerate(messages):
        if _lookup(message, "role") == "assistant" and not _truthy(_lookup(message, "tool_calls")):
            last_answer_index = index
    return last_answer_index


def _render_message(message: dict, index: int, *, replay_reasoning: bool) -> str:
    role = _lookup(message, "role")
    if role == "user":
        header = tokens.IM_USER
    elif role == "assistant":
        header = tokens.IM_ASSISTANT
    else:
        header = tokens.IM_SYSTEM
    name = _lookup(message, "name")
    label = _to_text(name) if _truthy(name) else _to_text(role)
    parts = [header, label, tokens.IM_MIDDLE]

    if role == "assistant":
        if replay_reasoning:
            parts.append(tokens.THINK_BEGIN + _reasoning_text(message) + tokens.THINK_END)
        else:
            parts.append(tokens.THINK_EMPTY)
        parts.append(_render_content(_lookup(message, "content")))
        tool_calls = _lookup(message, "tool_calls")
        if _truthy(tool_calls):
            parts.append(_render_tool_calls(tool_calls, index))
    elif role == "tool":
        parts.append("## Return of " + _to_text(_lookup(message, "tool_call_id")) + "\n")
        parts.append(_render_content(_lookup(message, "content")))
    else:
        parts.append(_render_content(_lookup(message, "content")))

    parts.append(tokens.IM_END)
    return "".join(parts)


def _reasoning_text(message: dict) -> str:
    # NOTE: the official template renders a null reasoning_content as the text "None". This
    # renderer treats null as absent, and ChatFormat drops null keys before either renderer runs.
    reasoning = _lookup(message, "reasoning_content")
    if reasoning is _MISSING or reasoning is None:
        reasoning = _lookup(message, "reasoning")
    if reasoning is None:
        return ""
    return _to_text(reasoning)


def _render_content(content: Any) -> str:
    """Render a string, or a list of parts in order; null and other values render as nothing."""
    if isinstance(content, str):
        return content
    if not isinstance(content, (list, tuple)):
        return ""
    rendered = []
    for part in content:
        part_type = _lookup(part, "type")
        if part_type in ("image", "image_url"):
            rendered.append(tokens.IMAGE_PROMPT + "\n")
        elif part_type in ("video", "video_url"):
            rendered.append(tokens.VIDEO_PLACEHOLDER + "\n")
        else:
            rendered.append(_to_text(_lookup(part, "text")))
    return "".join(rendered)


def _render_tool_calls(tool_calls: list[dict], message_index: int) -> str:
    rendered = [tokens.TOOL_CALLS_SECTION_BEGIN]
    for call_index, call in enumerate(tool_calls):
        arguments = _lookup(_lookup(call, "function"), "arguments")
        if arguments is _MISSING:
            raise ValueError(
                f"messages[{message_index}].tool_calls[{call_index}].function.arguments is missing; "
                "pass the arguments as a JSON string or object"
            )
        if not isinstance(arguments, str):
            # Same text as the template's tojson filter: json.dumps with ", " and ": " separators.
            arguments = json.dumps(arguments, ensure_ascii=False)
        rendered.append(tokens.TOOL_CALL_BEGIN + _to_text(_lookup(call, "id")) + tokens.TOOL_CALL_ARGUMENT_BEGIN)
        rendered.append(arguments + tokens.TOOL_CALL_END)
    rendered.append(tokens.TOOL_CALLS_SECTION_END)
    return "".join(rendered)


def _lookup(container: Any, key: str) -> Any:
    """Read ``container[key]`` the way the template's ``container.key`` does for JSON data."""
    if isinstance(container, dict):
        return container.get(key, _MISSING)
    return _MISSING


def _truthy(value: Any) -> bool:
    return value is not _MISSING and bool(value)


def _to_text(value: Any) -> str:
    """Convert a value to text as Jinja prints it: a missing key prints nothing, None prints ``None``."""
    if value is _MISSING:
        return ""
    return str(value)
