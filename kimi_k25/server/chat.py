"""POST /v1/chat/completions: render the chat, generate, split reasoning from content.

In thinking mode (the default; `chat_template_kwargs: {"thinking": false}` turns it off) the
prompt ends in `<think>` and everything the model writes before `</think>` is returned as
`reasoning_content`, in whole responses and in stream deltas alike.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

from fastapi.responses import JSONResponse, Response, StreamingResponse

from kimi_k25.chat import tokens as markers
from kimi_k25.chat.format import is_thinking
from kimi_k25.chat.reasoning import ReasoningStreamParser, split_reasoning
from kimi_k25.chat.jinja_renderer import ChatTemplateInputError
from kimi_k25.chat.validation import ChatFormatError
from kimi_k25.engine.sampling import SamplingParams, TokenLogprobs
from kimi_k25.server.context import SSE_DONE, ServingContext, sse_event
from kimi_k25.server.errors import SERVER_ERROR, APIError, invalid_request
from kimi_k25.server.protocol import (
    ChatChoice,
    ChatChoiceLogprobs,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    ChatLogprobEntry,
    ChatMessage,
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
    _reject_unsupported(body)
    thinking = is_thinking(body.chat_template_kwargs)
    try:
        prompt = context.chat_format.render(body.messages, tools=body.tools,
                                            chat_template_kwargs=body.chat_template_kwargs)
    except ChatFormatError as error:
        where = f"Invalid '{error.param}': " if error.param else ""
        raise invalid_request(f"{where}{error}", param=error.param) from error
    except ChatTemplateInputError as error:
        raise invalid_request(f"The chat template rejected the messages: {error}", param="messages") from error
    prompt_ids = context.tokenizer.encode(prompt)
    context.check_prompt_length(len(prompt_ids), "messages")

    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    keep = frozenset(context.tokenizer.token_to_id(m) for m in VISIBLE_MARKERS)
    params = context.sampling_params(body, body.max_completion_tokens or body.max_tokens, logprobs,
                                     skip_special_tokens=body.skip_special_tokens, keep_special_ids=keep)
    chat_id = f"chatcmpl-{request_id}"
    logger.info("Chat request %s: %d prompt tokens, n=%d, stream=%s, thinking=%s", request_id, len(prompt_ids),
                body.n, body.stream, thinking)
    if body.stream:
        return StreamingResponse(_stream(context, body, chat_id, request_id, prompt_ids, params, thinking),
                                 media_type="text/event-stream")
    return await _complete(context, body, chat_id, request_id, prompt_ids, params, thinking)


MEDIA_PART_TYPES = ("image_url", "video_url", "image", "video")


def _reject_unsupported(body: ChatCompletionRequest) -> None:
    for i, message in enumerate(body.messages):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            if isinstance(part, dict) and part.get("type") in MEDIA_PART_TYPES:
                raise invalid_request(f"Images and video are not supported by this server yet; remove the "
                                      f"{part['type']} part.", param=f"messages[{i}].content[{j}].type")
    if body.response_format is not None and body.response_format.get("type", "text") != "text":
        raise invalid_request("response_format other than {\"type\": \"text\"} is not supported yet; "
                              "remove it or ask for JSON in the prompt.", param="response_format")
    if body.tool_choice is not None and body.tool_choice not in ("auto", "none"):
        raise invalid_request("tool_choice \"required\" and named functions are not supported yet; "
                              "use \"auto\" or \"none\".", param="tool_choice")


async def _complete(context: ServingContext, body: ChatCompletionRequest, chat_id: str, request_id: str,
                    prompt_ids: list[int], params: SamplingParams, thinking: bool) -> JSONResponse:
    start = time.monotonic()
    texts = [""] * body.n
    reasons: list[str | None] = [None] * body.n
    counts = [0] * body.n
    logprob_reports: list[list[TokenLogprobs]] = [[] for _ in range(body.n)]
    async for index, output in context.generate_choices(request_id, prompt_ids, params, body.n):
        texts[index] += output.text
        logprob_reports[index].extend(output.logprobs)
        counts[index] = output.num_output_tokens
        if output.finished:
            reasons[index] = output.finish_reason

    choices = []
    for index in range(body.n):
        reasoning, content = split_reasoning(texts[index], thinking)
        choice_logprobs = None
        if params.logprobs is not None:
            entries = _logprob_entries(context, logprob_reports[index], reasons[index])
            choice_logprobs = ChatChoiceLogprobs(content=entries)
        message = ChatMessage(content=content, reasoning_content=reasoning)
        choices.append(ChatChoice(index=index, message=message, logprobs=choice_logprobs,
                                  finish_reason=reasons[index]))
    usage = Usage(prompt_tokens=len(prompt_ids), completion_tokens=sum(counts),
                  total_tokens=len(prompt_ids) + sum(counts))
    _log_finished(request_id, usage, start, reasons)
    response = ChatCompletionResponse(id=chat_id, model=context.served_model_name, choices=choices, usage=usage)
    body = response.model_dump(exclude_none=True)
    for choice in body["choices"]:
        choice["message"].setdefault("content", None)  # OpenAI always sends content, null or not
        choice.setdefault("logprobs", None)
    return JSONResponse(body)


async def _stream(context: ServingContext, body: ChatCompletionRequest, chat_id: str, request_id: str,
                  prompt_ids: list[int], params: SamplingParams, thinking: bool) -> AsyncIterator[str]:
    start = time.monotonic()
    created = int(time.time())
    include_usage = body.stream_options is not None and body.stream_options.include_usage
    parsers = [ReasoningStreamParser(thinking) for _ in range(body.n)]
    counts = [0] * body.n
    reasons: list[str | None] = [None] * body.n

    def chunk(index: int, delta: ChatDelta, finish_reason: str | None = None,
              logprobs: ChatChoiceLogprobs | None = None) -> str:
        choice = ChatChunkChoice(index=index, delta=delta, logprobs=logprobs, finish_reason=finish_reason)
        payload = ChatCompletionChunk(id=chat_id, created=created, model=context.served_model_name, choices=[choice])
        body = payload.model_dump(exclude_none=True)
        body["choices"][0].setdefault("finish_reason", None)
        return sse_event(body)

    try:
        for index in range(body.n):
            yield chunk(index, ChatDelta(role="assistant", content=""))
        async for index, output in context.generate_choices(request_id, prompt_ids, params, body.n):
            counts[index] = output.num_output_tokens
            reasoning, content = parsers[index].feed(output.text)
            if output.finished:
                tail_reasoning, tail_content = parsers[index].finish()
                reasoning, content = reasoning + tail_reasoning, content + tail_content
                reasons[index] = output.finish_reason
            logprobs = None
            if params.logprobs is not None:
                logprobs = ChatChoiceLogprobs(content=_logprob_entries(context, output.logprobs, output.finish_reason))
            if reasoning or content or logprobs is not None:
                yield chunk(index, ChatDelta(reasoning_content=reasoning or None, content=content or None),
                            logprobs=logprobs)
            if output.finished:
                yield chunk(index, ChatDelta(), finish_reason=output.finish_reason)
        usage = Usage(prompt_tokens=len(prompt_ids), completion_tokens=sum(counts),
                      total_tokens=len(prompt_ids) + sum(counts))
        if include_usage:
            payload = ChatCompletionChunk(id=chat_id, created=created, model=context.served_model_name,
                                          choices=[], usage=usage)
            yield sse_event(payload)
        _log_finished(request_id, usage, start, reasons)
    except APIError as error:
        logger.info("Request %s failed while streaming with %d: %s", request_id, error.status_code, error.message)
        yield sse_event(error.body())
    except Exception as error:  # noqa: BLE001 - the stream must still end with an error event and [DONE]
        logger.exception("Request %s failed while streaming", request_id)
        yield sse_event(APIError(500, f"Internal server error ({type(error).__name__}); see the server log for "
                                      f"request {request_id}.", SERVER_ERROR).body())
    yield SSE_DONE


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
