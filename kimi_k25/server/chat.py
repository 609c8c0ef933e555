"""POST /v1/chat/completions: render the chat, generate, split reasoning, content and tool calls.

In thinking mode (the default) everything the model writes before `</think>` is returned as
`reasoning_content`. When the request declares `tools`, Kimi tool-call tokens in the reply
become OpenAI `tool_calls` with `finish_reason: "tool_calls"`. Streams carry the same pieces
as deltas: reasoning first, then content, then one delta that opens each call followed by its
argument fragments as the model writes them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import JSONResponse, Response, StreamingResponse

from kimi_k25.chat import tokens as markers
from kimi_k25.chat.reasoning import ReasoningStreamParser, split_reasoning
from kimi_k25.chat.tool_parser import ToolCallStreamParser, parse_tool_calls
from kimi_k25.engine.sampling import TokenLogprobs
from kimi_k25.server.chat_plan import ChatPlan, check_grammar, plan_chat, prepare_inputs
from kimi_k25.server.context import SSE_DONE, ServingContext, sse_event
from kimi_k25.server.errors import SERVER_ERROR, APIError, invalid_request
from kimi_k25.server.protocol import (
    ChatChoice,
    ChatChoiceLogprobs,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatLogprobEntry,
    ChatMessage,
    PromptTokensDetails,
    Usage,
)

logger = logging.getLogger(__name__)

# Special tokens that stay in the chat output text because the reasoning and tool-call parsers
# read them. Every other special token is dropped.
VISIBLE_MARKERS = (
    markers.THINK_BEGIN, markers.THINK_END, markers.TOOL_CALLS_SECTION_BEGIN, markers.TOOL_CALLS_SECTION_END,
    markers.TOOL_CALL_BEGIN, markers.TOOL_CALL_ARGUMENT_BEGIN, markers.TOOL_CALL_END,
)


async def create_chat_completion(context: ServingContext, body: ChatCompletionRequest, request_id: str) -> Response:
    context.check_model(body.model)
    context.check_capacity()
    if body.top_logprobs is not None and not body.logprobs:
        raise invalid_request("top_logprobs requires logprobs to be true.", param="top_logprobs")
    plan = plan_chat(context, body)
    await check_grammar(context, body, plan)
    await prepare_inputs(context, plan, request_id)

    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    keep = frozenset(context.tokenizer.token_to_id(m) for m in VISIBLE_MARKERS)
    params = context.sampling_params(body, body.max_completion_tokens or body.max_tokens, logprobs,
                                     skip_special_tokens=body.skip_special_tokens, keep_special_ids=keep)
    params.banned_token_ids = plan.banned_token_ids
    params.grammar = plan.grammar
    chat_id = f"chatcmpl-{request_id}"
    logger.debug("Chat request %s: %d prompt tokens, n=%d, stream=%s, thinking=%s, tools=%d, constrained=%s",
                request_id, len(plan.prompt_ids), body.n, body.stream, plan.thinking, len(body.tools or []),
                plan.grammar is not None)
    if body.stream:
        return StreamingResponse(_stream(context, body, plan, params, chat_id, request_id),
                                 media_type="text/event-stream")
    return await _complete(context, body, plan, params, chat_id, request_id)


class ChoiceAssembler:
    """Turn one choice's text increments into OpenAI delta dicts: reasoning, content, tool calls."""

    def __init__(self, plan: ChatPlan, request_id: str) -> None:
        self.plan = plan
        self.request_id = request_id
        self.reasoning = ReasoningStreamParser(plan.thinking)
        self.tool_parser = ToolCallStreamParser(plan.tools, plan.index_offset) if plan.parse_tool_calls else None

    def feed(self, text: str) -> list[dict[str, Any]]:
        reasoning, content = self.reasoning.feed(text)
        return self._deltas(reasoning, content)

    def finish(self, engine_reason: str | None) -> tuple[list[dict[str, Any]], str | None]:
        """Release held-back text; return the last deltas and the OpenAI finish_reason."""
        reasoning, content = self.reasoning.finish()
        deltas = self._deltas(reasoning, content)
        if self.tool_parser is None:
            return deltas, engine_reason
        end = self.tool_parser.finish()
        deltas.extend(self._keep_allowed_calls(end.deltas))
        _log_parse_problems(self.request_id, end)
        complete_calls = end.tool_call_count - (1 if end.incomplete_call_index is not None else 0)
        if engine_reason == "stop" and complete_calls > 0:
            return deltas, "tool_calls"
        return deltas, engine_reason

    def _deltas(self, reasoning: str, content: str) -> list[dict[str, Any]]:
        deltas: list[dict[str, Any]] = []
        if reasoning:
            deltas.append({"reasoning_content": reasoning})
        if content:
            if self.tool_parser is None:
                deltas.append({"content": content})
            else:
                deltas.extend(self._keep_allowed_calls(self.tool_parser.feed(content)))
        return deltas

    def _keep_allowed_calls(self, deltas: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """With parallel_tool_calls false, drop every call after the first."""
        if self.plan.parallel_tool_calls:
            return deltas
        kept = []
        for delta in deltas:
            if "tool_calls" in delta:
                calls = [c for c in delta["tool_calls"] if c["index"] == 0]
                if not calls:
                    continue
                delta = {"tool_calls": calls}
            kept.append(delta)
        return kept


def _log_parse_problems(request_id: str, result: Any) -> None:
    if result.error:
        logger.info("Request %s: malformed tool-call output (%s); the rest was returned as content",
                    request_id, result.error)
    if result.unknown_function_calls:
        logger.info("Request %s: tool calls %s name functions that are not in tools", request_id,
                    result.unknown_function_calls)
    if result.invalid_arguments_calls:
        logger.info("Request %s: tool calls %s have arguments that are not a JSON object", request_id,
                    result.invalid_arguments_calls)
    if result.skipped_calls:
        logger.info("Request %s: skipped tool calls without a readable function name: %s", request_id,
                    result.skipped_calls)


def assemble_message(plan: ChatPlan, text: str, engine_reason: str | None,
                     request_id: str) -> tuple[ChatMessage, str | None]:
    """Build the whole assistant message of one choice from its complete text."""
    reasoning, content = split_reasoning(text, plan.thinking)
    if not plan.parse_tool_calls:
        return ChatMessage(content=content, reasoning_content=reasoning), engine_reason
    result = parse_tool_calls(content or "", plan.tools, index_offset=plan.index_offset)
    _log_parse_problems(request_id, result)
    calls = result.tool_calls if plan.parallel_tool_calls else result.tool_calls[:1]
    finish_reason = "tool_calls" if calls and engine_reason == "stop" else engine_reason
    return ChatMessage(content=result.content, reasoning_content=reasoning, tool_calls=calls or None), finish_reason


async def _complete(context: ServingContext, body: ChatCompletionRequest, plan: ChatPlan, params, chat_id: str,
                    request_id: str) -> JSONResponse:
    start = time.monotonic()
    texts = [""] * body.n
    reasons: list[str | None] = [None] * body.n
    counts = [0] * body.n
    logprob_reports: list[list[TokenLogprobs]] = [[] for _ in range(body.n)]
    choices = context.generate_choices(request_id, plan.prompt_ids, params, body.n, plan.media_embeds)
    cached_tokens = 0
    async for index, output in choices:
        cached_tokens = max(cached_tokens, output.num_cached_tokens)
        texts[index] += output.text
        logprob_reports[index].extend(output.logprobs)
        counts[index] = output.num_output_tokens
        if output.finished:
            reasons[index] = output.finish_reason

    choices = []
    for index in range(body.n):
        message, finish_reason = assemble_message(plan, texts[index], reasons[index], request_id)
        choice_logprobs = None
        if params.logprobs is not None:
            choice_logprobs = ChatChoiceLogprobs(content=_logprob_entries(context, logprob_reports[index],
                                                                          reasons[index]))
        choices.append(ChatChoice(index=index, message=message, logprobs=choice_logprobs,
                                  finish_reason=finish_reason))
        reasons[index] = finish_reason
    usage = _usage(plan, counts, cached_tokens)
    _log_finished(request_id, usage, start, reasons)
    response = ChatCompletionResponse(id=chat_id, model=context.served_model_name, choices=choices, usage=usage)
    payload = response.model_dump(exclude_none=True)
    for choice in payload["choices"]:
        choice["message"].setdefault("content", None)  # OpenAI always sends content, null or not
        choice.setdefault("logprobs", None)
    return JSONResponse(payload)


async def _stream(context: ServingContext, body: ChatCompletionRequest, plan: ChatPlan, params, chat_id: str,
                  request_id: str) -> AsyncIterator[str]:
    start = time.monotonic()
    created = int(time.time())
    include_usage = body.stream_options is not None and body.stream_options.include_usage
    continuous_usage = body.stream_options is not None and body.stream_options.continuous_usage_stats
    assemblers = [ChoiceAssembler(plan, request_id) for _ in range(body.n)]
    counts = [0] * body.n
    reasons: list[str | None] = [None] * body.n
    cached_tokens = 0

    def chunk(index: int, delta: dict[str, Any], finish_reason: str | None = None,
              logprobs: ChatChoiceLogprobs | None = None) -> str:
        choice: dict[str, Any] = {"index": index, "delta": delta, "finish_reason": finish_reason}
        if logprobs is not None:
            choice["logprobs"] = logprobs.model_dump()
        payload: dict[str, Any] = {"id": chat_id, "object": "chat.completion.chunk", "created": created,
                                   "model": context.served_model_name, "choices": [choice]}
        if continuous_usage:
            payload["usage"] = _usage(plan, counts, cached_tokens).model_dump(exclude_none=True)
        return sse_event(payload)

    try:
        for index in range(body.n):
            yield chunk(index, {"role": "assistant", "content": ""})
        choices = context.generate_choices(request_id, plan.prompt_ids, params, body.n, plan.media_embeds)
        async for index, output in choices:
            cached_tokens = max(cached_tokens, output.num_cached_tokens)
            counts[index] = output.num_output_tokens
            deltas = assemblers[index].feed(output.text)
            finish_reason = None
            if output.finished:
                tail, finish_reason = assemblers[index].finish(output.finish_reason)
                deltas.extend(tail)
                reasons[index] = finish_reason
            logprobs = None
            if params.logprobs is not None and output.logprobs:
                entries = _logprob_entries(context, output.logprobs, output.finish_reason)
                logprobs = ChatChoiceLogprobs(content=entries) if entries else None
            if logprobs is not None and not deltas:
                deltas = [{}]
            for i, delta in enumerate(deltas):
                yield chunk(index, delta, logprobs=logprobs if i == 0 else None)
            if finish_reason is not None:
                yield chunk(index, {}, finish_reason=finish_reason)
        usage = _usage(plan, counts, cached_tokens)
        if include_usage:
            yield sse_event({"id": chat_id, "object": "chat.completion.chunk", "created": created,
                             "model": context.served_model_name, "choices": [],
                             "usage": usage.model_dump(exclude_none=True)})
        _log_finished(request_id, usage, start, reasons)
    except APIError as error:
        logger.info("Request %s failed while streaming with %d: %s", request_id, error.status_code, error.message)
        yield sse_event(error.body())
    except Exception as error:  # noqa: BLE001 - the stream must still end with an error event and [DONE]
        logger.exception("Request %s failed while streaming", request_id)
        yield sse_event(APIError(500, f"Internal server error ({type(error).__name__}); see the server log for "
                                      f"request {request_id}.", SERVER_ERROR).body())
    yield SSE_DONE


def _usage(plan: ChatPlan, counts: list[int], cached_tokens: int = 0) -> Usage:
    return Usage(prompt_tokens=len(plan.prompt_ids), completion_tokens=sum(counts),
                 total_tokens=len(plan.prompt_ids) + sum(counts),
                 prompt_tokens_details=PromptTokensDetails(cached_tokens=cached_tokens))


def _logprob_entries(context: ServingContext, reports: list[TokenLogprobs],
                     finish_reason: str | None) -> list[ChatLogprobEntry]:
    tokenizer = context.tokenizer
    if finish_reason == "stop" and reports and reports[-1].token_id in tokenizer.stop_token_ids:
        reports = reports[:-1]  # the end-of-turn token is not part of the message

    def describe(token_id: int, logprob: float) -> dict:
        data = tokenizer.token_bytes(token_id)
        return {"token": tokenizer.decode([token_id]), "logprob": logprob, "bytes": list(data)}

    return [ChatLogprobEntry(**describe(r.token_id, r.logprob), top_logprobs=[describe(t, lp) for t, lp in r.top])
            for r in reports]


def _log_finished(request_id: str, usage: Usage, start: float, reasons: list[str | None]) -> None:
    logger.info("Request %s finished: %d prompt + %d completion tokens in %.2f s (finish_reason %s)", request_id,
                usage.prompt_tokens, usage.completion_tokens, time.monotonic() - start, ",".join(map(str, reasons)))
