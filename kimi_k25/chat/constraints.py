"""Grammars that force a K2.5 reply into a shape: a tool call, a JSON object, a JSON schema.

They are written in llguidance's Lark dialect, where `<|name|>` matches one special token by
name and `%json {...}` embeds a JSON schema. The engine applies them as token masks.
"""

from __future__ import annotations

import json
from typing import Any

from kimi_k25.chat import tokens

ANY_JSON_OBJECT: dict[str, Any] = {"type": "object"}


def _lark_string(text: str) -> str:
    """Quote `text` as a Lark string literal."""
    return json.dumps(text, ensure_ascii=False)


def tool_call_grammar(functions: list[dict[str, Any]], parallel: bool) -> str:
    """Return a grammar for a tool-call section calling only `functions`, with schema-valid arguments.

    `functions` are OpenAI `function` objects (name, parameters). The section contains one call,
    or one or more when `parallel`. Each id has the trained form `functions.NAME:IDX`.
    """
    if not functions:
        raise ValueError("a tool-call grammar needs at least one function")
    rules = [
        f"start: {tokens.TOOL_CALLS_SECTION_BEGIN} {'call+' if parallel else 'call'} {tokens.TOOL_CALLS_SECTION_END}",
        "call: " + " | ".join(f"call_{i}" for i in range(len(functions))),
        "CALL_INDEX: /[0-9]{1,6}/",
    ]
    for i, function in enumerate(functions):
        schema = function.get("parameters") or ANY_JSON_OBJECT
        header = _lark_string(f"functions.{function['name']}:")
        rules.append(f"call_{i}: {tokens.TOOL_CALL_BEGIN} {header} CALL_INDEX {tokens.TOOL_CALL_ARGUMENT_BEGIN} "
                     f"args_{i} {tokens.TOOL_CALL_END}")
        rules.append(f"args_{i}: %json {json.dumps(schema, ensure_ascii=False)}")
    return "\n".join(rules) + "\n"


def json_grammar(schema: dict[str, Any] | None) -> str:
    """Return a grammar for one JSON value matching `schema` (any JSON object when None)."""
    return f"start: %json {json.dumps(schema if schema is not None else ANY_JSON_OBJECT, ensure_ascii=False)}\n"
