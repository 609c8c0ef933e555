"""Turn a chat request into a prompt and generation constraints, before anything is generated.

The plan settles the thinking switch (`chat_template_kwargs.thinking`, or Moonshot's top-level
`thinking: {"type": "enabled" | "disabled"}`), Moonshot's partial mode (a last assistant
message with `"partial": true` is continued instead of replied to), `tool_choice` and
`parallel_tool_calls`, and `response_format`. Every problem becomes a 400 naming the field.
"""

from __future__ import annotations

import asyncio
import logging

from dataclasses import dataclass, field
from typing import Any

import torch

from kimi_k25.chat import tokens as markers
from kimi_k25.chat.constraints import json_grammar, tool_call_grammar
from kimi_k25.chat.format import is_thinking
from kimi_k25.chat.jinja_renderer import ChatTemplateError, ChatTemplateInputError
from kimi_k25.chat.tool_parser import count_prior_tool_calls
from kimi_k25.chat.validation import ChatFormatError
from kimi_k25.engine.structured import GrammarSpec
from kimi_k25.media.cache import encode_with_cache
from kimi_k25.media.errors import MediaError
from kimi_k25.media.processor import MediaPart, find_media_parts
from kimi_k25.media.prompt import expand_media_prompt
from kimi_k25.server.context import ServingContext
from kimi_k25.server.errors import APIError, invalid_request
from kimi_k25.server.protocol import ChatCompletionRequest

logger = logging.getLogger(__name__)


@dataclass
class ChatPlan:
    prompt_text: str  # rendered, with one placeholder per image and video
    media_parts: list[MediaPart]
    thinking: bool  # whether the output starts inside the reasoning
    tools: list[dict] | None  # declared tools, for the tool-call parser
    parse_tool_calls: bool
    parallel_tool_calls: bool
    index_offset: int  # tool calls in earlier assistant messages, for generated call ids
    grammar: GrammarSpec | None
    banned_token_ids: frozenset[int]
    # Filled by prepare_inputs: token ids with media tokens expanded, and the media embeddings.
    prompt_ids: list[int] = field(default_factory=list)
    media_embeds: torch.Tensor | None = None


def plan_chat(context: ServingContext, body: ChatCompletionRequest) -> ChatPlan:
    template_kwargs = _template_kwargs(body, context.chat_format.template_variables)
    thinking = is_thinking(template_kwargs)
    messages, partial = _split_partial(body.messages)
    media_parts = _media_parts(context, messages)
    tool_choice = _tool_choice(body)

    try:
        prompt = context.chat_format.render(messages, tools=body.tools, chat_template_kwargs=template_kwargs)
    except ChatFormatError as error:
        where = f"Invalid '{error.param}': " if error.param else ""
        raise invalid_request(f"{where}{error}", param=error.param, code="invalid_value") from error
    except ChatTemplateInputError as error:
        raise invalid_request(f"The chat template rejected the messages: {error}", param="messages") from error
    except ChatTemplateError as error:
        raise invalid_request(f"The chat template failed to render these messages: {error}",
                              param="messages") from error

    output_in_reasoning = thinking
    if partial is not None:
        prompt, output_in_reasoning = _continue_partial(prompt, partial, thinking, len(body.messages) - 1)

    tokenizer = context.tokenizer
    section_begin = tokenizer.token_to_id(markers.TOOL_CALLS_SECTION_BEGIN)
    call_begin = tokenizer.token_to_id(markers.TOOL_CALL_BEGIN)
    start_after = tokenizer.think_end_id if output_in_reasoning else None
    grammar = None
    banned: frozenset[int] = frozenset()
    parallel = body.parallel_tool_calls is not False
    if tool_choice == "none":
        banned = frozenset({section_begin, call_begin})
    elif tool_choice is not None and tool_choice != "auto":
        functions = [t["function"] for t in body.tools or [] if t.get("type") == "function"]
        if tool_choice != "required":
            functions = [f for f in functions if f.get("name") == tool_choice]
            parallel = False
        grammar = GrammarSpec(tool_call_grammar(functions, parallel), start_after_token=start_after,
                              banned_before_start=frozenset({section_begin, call_begin}))
    response_grammar = _response_format_grammar(body, start_after)
    if grammar is not None and response_grammar is not None:
        raise invalid_request("A forced tool_choice and a JSON response_format cannot be combined; drop one.",
                              param="response_format")
    grammar = grammar or response_grammar

    return ChatPlan(
        prompt_text=prompt,
        media_parts=media_parts,
        thinking=output_in_reasoning,
        tools=body.tools,
        parse_tool_calls=bool(body.tools) and tool_choice != "none",
        parallel_tool_calls=parallel,
        index_offset=count_prior_tool_calls(messages),
        grammar=grammar,
        banned_token_ids=banned,
    )


async def check_grammar(context: ServingContext, body: ChatCompletionRequest, plan: ChatPlan) -> None:
    """Compile the plan's grammar off the event loop; a schema llguidance rejects is a 400."""
    if plan.grammar is None:
        return
    try:
        await asyncio.to_thread(context.engine.engine.grammar_compiler.check, plan.grammar)
    except ValueError as error:
        param = "response_format" if body.response_format else "tools"
        raise invalid_request(f"The {param} cannot be turned into a decoding constraint: {error}",
                              param=param) from error


def _template_kwargs(body: ChatCompletionRequest, known: frozenset[str]) -> dict[str, Any] | None:
    """Check chat_template_kwargs and merge Moonshot's top-level `thinking` field into them."""
    kwargs = dict(body.chat_template_kwargs or {})
    for key, value in kwargs.items():
        if key not in known:
            raise invalid_request(f"chat_template_kwargs.{key} is not used by this model's chat template, which "
                                  f"reads {', '.join(sorted(known)) or 'no variables'}.",
                                  param=f"chat_template_kwargs.{key}", code="unknown_parameter")
    if "thinking" in kwargs and not isinstance(kwargs["thinking"], bool):
        raise invalid_request("chat_template_kwargs.thinking must be true or false.",
                              param="chat_template_kwargs.thinking", code="invalid_value")
    if body.thinking is None:
        return kwargs or None
    kind = body.thinking.get("type") if isinstance(body.thinking, dict) else None
    if kind not in ("enabled", "disabled"):
        raise invalid_request("thinking.type must be \"enabled\" or \"disabled\".", param="thinking.type")
    enabled = kind == "enabled"
    if "thinking" in kwargs and (kwargs["thinking"] is not False) != enabled:
        raise invalid_request("thinking and chat_template_kwargs.thinking disagree; set only one of them.",
                              param="thinking")
    kwargs["thinking"] = enabled
    return kwargs


def _split_partial(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Separate a trailing partial assistant message (Moonshot's partial mode) from the history."""
    for i, message in enumerate(messages):
        if isinstance(message, dict) and message.get("partial") and i != len(messages) - 1:
            raise invalid_request("Only the last message may be partial.", param=f"messages[{i}].partial")
    last = messages[-1] if messages else None
    if not (isinstance(last, dict) and last.get("partial")):
        return [{k: v for k, v in m.items() if k != "partial"} if isinstance(m, dict) else m for m in messages], None
    if last.get("role") != "assistant":
        raise invalid_request("partial is only allowed on an assistant message.",
                              param=f"messages[{len(messages) - 1}].partial")
    if last.get("tool_calls"):
        raise invalid_request("A partial assistant message cannot carry tool_calls.",
                              param=f"messages[{len(messages) - 1}].tool_calls")
    return [dict(m) for m in messages[:-1]], last


def _continue_partial(prompt: str, partial: dict[str, Any], thinking: bool, index: int) -> tuple[str, bool]:
    """Append the partial assistant text after the generation prompt; return the prompt and
    whether the continuation is still inside the reasoning.

    The prompt ends in `<think>` (thinking) or `<think></think>` (instant). With thinking on, a
    partial message that has content closes the reasoning, after its reasoning_content if it has
    one. A partial message with only reasoning_content leaves the reasoning open, so the model
    continues it.
    """
    content = partial.get("content")
    if isinstance(content, list):
        if any(not isinstance(p, dict) or p.get("type") != "text" for p in content):
            raise invalid_request("A partial message may contain only text parts.", param=f"messages[{index}].content")
        content = "".join(p.get("text", "") for p in content)
    if content is not None and not isinstance(content, str):
        raise invalid_request("content must be a string.", param=f"messages[{index}].content")
    reasoning = partial.get("reasoning_content") or partial.get("reasoning") or ""
    if not thinking:
        return prompt + (content or ""), False
    if content:
        return prompt + reasoning + markers.THINK_END + content, False
    return prompt + reasoning, True


def _media_parts(context: ServingContext, messages: list[dict[str, Any]]) -> list[MediaPart]:
    """Find the image and video parts, rejecting them when the model cannot see."""
    try:
        parts = find_media_parts(messages)
        if parts and context.media_processor is not None:
            context.media_processor.check_count(parts)
    except MediaError as error:
        raise _media_request_error(error) from error
    if parts and context.media_processor is None:
        raise invalid_request(f"This model has no vision tower, so it cannot take images or video; remove the "
                              f"{parts[0].kind} part.", param=parts[0].param, code="media_not_supported")
    return parts


def _media_request_error(error: MediaError) -> APIError:
    return invalid_request(str(error), param=error.param, code=error.code)


async def prepare_inputs(context: ServingContext, plan: ChatPlan, request_id: str) -> None:
    """Tokenize the prompt; with media, load and process it, expand its tokens and run the vision tower.

    Decoding, resizing and encoding run in worker threads so the event loop keeps serving.
    """
    if not plan.media_parts:
        plan.prompt_ids = context.tokenizer.encode(plan.prompt_text)
        context.check_prompt_length(len(plan.prompt_ids), "messages")
        return
    processor = context.media_processor
    try:
        media = await asyncio.gather(*(asyncio.to_thread(processor.process_part, p) for p in plan.media_parts))
        expanded = expand_media_prompt(plan.prompt_text, media)
    except MediaError as error:
        raise _media_request_error(error) from error
    plan.prompt_ids = context.tokenizer.encode(expanded.text)
    placeholder = context.tokenizer.media_pad_id
    if plan.prompt_ids.count(placeholder) != expanded.num_media_tokens:
        raise invalid_request("The message text contains the reserved media token <|media_pad|>; remove it.",
                              param="messages", code="invalid_value")
    context.check_prompt_length(len(plan.prompt_ids), "messages")

    model = context.engine.engine.model

    def encode() -> torch.Tensor:
        with context.encode_lock, torch.inference_mode():
            return encode_with_cache(expanded.items, model.encode_media, context.media_cache)

    plan.media_embeds = await asyncio.to_thread(encode)
    logger.debug("Request %s: %d media items, %d media tokens", request_id, len(expanded.items),
                 expanded.num_media_tokens)


def _tool_choice(body: ChatCompletionRequest) -> str | None:
    """Return None (no tools), "auto", "none", "required", or the name of the forced function."""
    choice = body.tool_choice
    names = [t.get("function", {}).get("name") for t in body.tools or [] if isinstance(t, dict)]
    if choice is None:
        return "auto" if body.tools else None
    if isinstance(choice, str):
        if choice not in ("auto", "none", "required"):
            raise invalid_request(f"tool_choice must be \"auto\", \"none\", \"required\" or a function object, "
                                  f"got {choice!r}.", param="tool_choice")
        if choice == "required" and not names:
            raise invalid_request("tool_choice \"required\" needs at least one tool in tools.", param="tool_choice")
        return choice
    function = choice.get("function") if choice.get("type") == "function" else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str):
        raise invalid_request("A named tool_choice must look like {\"type\": \"function\", \"function\": "
                              "{\"name\": \"...\"}}.", param="tool_choice")
    if name not in names:
        raise invalid_request(f"tool_choice names function {name!r}, which is not in tools "
                              f"({', '.join(map(str, names)) or 'none declared'}).", param="tool_choice.function.name")
    return name


def _response_format_grammar(body: ChatCompletionRequest, start_after: int | None) -> GrammarSpec | None:
    response_format = body.response_format
    if response_format is None:
        return None
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return GrammarSpec(json_grammar(None), start_after_token=start_after)
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
            raise invalid_request("response_format.json_schema must be an object with a \"schema\" object.",
                                  param="response_format.json_schema")
        return GrammarSpec(json_grammar(spec.get("schema", {})), start_after_token=start_after)
    raise invalid_request(f"response_format.type must be \"text\", \"json_object\" or \"json_schema\", got {kind!r}.",
                          param="response_format.type")
