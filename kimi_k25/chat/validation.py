"""Checks and normalization of OpenAI-style chat requests before prompt rendering.

Errors carry the OpenAI-style path of the offending field (``messages[2].role``,
``messages[0].content[1].type``) so that the server can return it as the error's ``param``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# "developer" is OpenAI's newer name for system instructions, so it is rendered as a system message.
ALLOWED_ROLES = ("system", "developer", "user", "assistant", "tool")
# Roles whose messages must have content. An assistant message may carry only tool calls, or nothing.
_CONTENT_REQUIRED_ROLES = ("system", "developer", "user", "tool")
TEXT_PART_TYPES = ("text",)
MEDIA_PART_TYPES = ("image_url", "video_url", "image", "video")
CONTENT_PART_TYPES = TEXT_PART_TYPES + MEDIA_PART_TYPES


class ChatFormatError(ValueError):
    """An invalid chat request, with ``param`` set to the OpenAI-style path of the invalid field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def validate_messages(messages: Any) -> None:
    """Raise ChatFormatError for the first message field the K2.5 format cannot render."""
    if not isinstance(messages, list):
        raise ChatFormatError(f"messages must be a list of message objects, got {type(messages).__name__}", "messages")
    if not messages:
        raise ChatFormatError("messages must contain at least one message", "messages")
    for index, message in enumerate(messages):
        _validate_message(message, f"messages[{index}]")


def validate_tools(tools: Any) -> None:
    """Raise ChatFormatError unless ``tools`` is None or a list of tool objects."""
    if tools is None:
        return
    if not isinstance(tools, list):
        raise ChatFormatError(f"tools must be a list of tool objects, got {type(tools).__name__}", "tools")
    for index, tool in enumerate(tools):
        if not isinstance(tool, Mapping):
            raise ChatFormatError(f"each tool must be an object, got {type(tool).__name__}", f"tools[{index}]")
        if tool.get("type", "function") != "function":
            continue  # other tool types are not declared to the model, as in the K2.5 template
        function = tool.get("function")
        if not isinstance(function, Mapping):
            raise ChatFormatError('a function tool needs a "function" object with a name and parameters',
                                  f"tools[{index}].function")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise ChatFormatError("a function tool needs a non-empty function name", f"tools[{index}].function.name")
        parameters = function.get("parameters")
        if parameters is not None and not isinstance(parameters, Mapping):
            raise ChatFormatError(f"function parameters must be a JSON schema object, got {type(parameters).__name__}",
                                  f"tools[{index}].function.parameters")


def _validate_message(message: Any, path: str) -> None:
    if not isinstance(message, Mapping):
        raise ChatFormatError(f"each message must be an object, got {type(message).__name__}", path)

    role = message.get("role")
    if role is None:
        raise ChatFormatError(f"{path} has no role; set role to one of {', '.join(ALLOWED_ROLES)}", f"{path}.role")
    if role not in ALLOWED_ROLES:
        raise ChatFormatError(f"invalid role {role!r}; expected one of {', '.join(ALLOWED_ROLES)}", f"{path}.role")

    name = message.get("name")
    if name is not None and not isinstance(name, str):
        raise ChatFormatError(f"name must be a string, got {type(name).__name__}", f"{path}.name")

    content = message.get("content")
    if content is None:
        if role in _CONTENT_REQUIRED_ROLES:
            raise ChatFormatError(
                f"a {role} message needs content: a string or a list of content parts", f"{path}.content"
            )
    else:
        _validate_content(content, f"{path}.content")

    if role == "tool":
        tool_call_id = message.get("tool_call_id")
        if not isinstance(tool_call_id, str):
            raise ChatFormatError(
                "a tool message needs tool_call_id, the id of the tool call it answers", f"{path}.tool_call_id"
            )

    tool_calls = message.get("tool_calls")
    if tool_calls is not None:
        if role != "assistant":
            raise ChatFormatError(f"only assistant messages may carry tool_calls, not {role}", f"{path}.tool_calls")
        _validate_tool_calls(tool_calls, f"{path}.tool_calls")

    for key in ("reasoning_content", "reasoning"):
        reasoning = message.get(key)
        if reasoning is not None and not isinstance(reasoning, str):
            raise ChatFormatError(f"{key} must be a string or null, got {type(reasoning).__name__}", f"{path}.{key}")


def _validate_content(content: Any, path: str) -> None:
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise ChatFormatError(
            f"content must be a string or a list of content parts, got {type(content).__name__}", path
        )
    for index, part in enumerate(content):
        part_path = f"{path}[{index}]"
        if not isinstance(part, Mapping):
            raise ChatFormatError(f"each content part must be an object, got {type(part).__name__}", part_path)
        part_type = part.get("type")
        if part_type not in CONTENT_PART_TYPES:
            raise ChatFormatError(
                f"unknown content part type {part_type!r}; expected one of {', '.join(CONTENT_PART_TYPES)}",
                f"{part_path}.type",
            )
        if part_type in TEXT_PART_TYPES and not isinstance(part.get("text"), str):
            raise ChatFormatError("a text content part needs a string field 'text'", f"{part_path}.text")


def _validate_tool_calls(tool_calls: Any, path: str) -> None:
    if not isinstance(tool_calls, list):
        raise ChatFormatError(f"tool_calls must be a list, got {type(tool_calls).__name__}", path)
    for index, call in enumerate(tool_calls):
        call_path = f"{path}[{index}]"
        if not isinstance(call, Mapping):
            raise ChatFormatError(f"each tool call must be an object, got {type(call).__name__}", call_path)
        call_id = call.get("id")
        if call_id is not None and not isinstance(call_id, str):
            raise ChatFormatError(f"a tool call id must be a string, got {type(call_id).__name__}", f"{call_path}.id")
        function = call.get("function")
        if not isinstance(function, Mapping):
            raise ChatFormatError("a tool call needs a function object with name and arguments", f"{call_path}.function")
        function_name = function.get("name")
        if not isinstance(function_name, str) or not function_name:
            raise ChatFormatError("a tool call needs a non-empty function name", f"{call_path}.function.name")
        arguments = function.get("arguments")
        if not isinstance(arguments, (str, Mapping)):
            raise ChatFormatError(
                "function arguments must be a JSON string or an object, "
                f"got {'nothing' if arguments is None else type(arguments).__name__}",
                f"{call_path}.function.arguments",
            )


def normalize_messages(messages: list[dict]) -> list[dict]:
    """Return copies of validated messages in the form the K2.5 template expects.

    - ``developer`` becomes ``system``, because the model was trained on system messages only.
    - ``reasoning`` (the field name vLLM clients send) fills ``reasoning_content`` when that is
      absent or null, and is then removed.
    - A null ``reasoning_content`` is removed, because the official template would print it as
      the text ``None``. A null tool call ``id`` is removed for the same reason.

    The caller's messages are not modified.
    """
    normalized = []
    for message in messages:
        message = dict(message)
        if message["role"] == "developer":
            message["role"] = "system"

        alias = message.pop("reasoning", None)
        if message.get("reasoning_content") is None:
            message.pop("reasoning_content", None)
            if alias is not None:
                message["reasoning_content"] = alias

        if message.get("tool_calls"):
            message["tool_calls"] = [_without_null_id(call) for call in message["tool_calls"]]
        normalized.append(message)
    return normalized


def _without_null_id(call: Mapping[str, Any]) -> dict[str, Any]:
    call = dict(call)
    if call.get("id", "") is None:
        del call["id"]
    return call


def deep_sort_keys(value: Any) -> Any:
    """Return a copy of ``value`` with the keys of every nested dict sorted; list order is kept.

    The checkpoint's own ``apply_chat_template`` sorts tool definitions this way before it
    declares them, so the JSON declaration lists ``description`` before ``name`` and so on.
    """
    if isinstance(value, Mapping):
        return {key: deep_sort_keys(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [deep_sort_keys(item) for item in value]
    return value
