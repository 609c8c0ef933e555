"""POST /v1/completions: continue a prompt given as text or token ids.

`prompt` may be one string, one list of token ids, or a list of either; each prompt gets `n`
choices, numbered prompt by prompt as OpenAI does. Log-probabilities use the completions shape
(`tokens`, `token_logprobs`, `top_logprobs`, `text_offset`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

from fastapi.responses import JSONResponse, Response, StreamingResponse

from kimi_k25.engine.sampling import SamplingParams, TokenLogprobs
from kimi_k25.server.context import SSE_DONE, ServingContext, sse_event
from kimi_k25.server.errors import SERVER_ERROR, APIError, invalid_request
from kimi_k25.server.protocol import (
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    PromptTokensDetails,
    Usage,
)

logger = logging.getLogger(__name__)


async def create_completion(context: ServingContext, body: CompletionRequest, request_id: str) -> Response:
    context.check_model(body.model)
    context.check_capacity()
    if body.echo:
        raise invalid_request("echo is not supported; prepend the prompt to the returned text instead.", param="echo")
    if body.suffix is not None:
        raise invalid_request("suffix is not supported by this model.", param="suffix")
    if body.best_of is not None and body.best_of != body.n:
        raise invalid_request("best_of must equal n (choosing the best of several samples is not supported).",
                              param="best_of")
    prompts = _token_prompts(context, body.prompt)
    for i, prompt_ids in enumerate(prompts):
        context.check_prompt_length(len(prompt_ids), "prompt" if len(prompts) == 1 else f"prompt[{i}]")
    params = context.sampling_params(body, body.max_tokens, body.logprobs, skip_special_tokens=body.skip_special_tokens)
    completion_id = f"cmpl-{request_id}"
    logger.debug("Completion request %s: %d prompts of %s tokens, n=%d, stream=%s", request_id, len(prompts),
                ",".join(str(len(p)) for p in prompts), body.n, body.stream)
    if body.stream:
        return StreamingResponse(_stream(context, body, completion_id, request_id, prompts, params),
                                 media_type="text/event-stream")
    return await _complete(context, body, completion_id, request_id, prompts, params)


def _token_prompts(context: ServingContext, prompt: str | list) -> list[list[int]]:
    """Normalise the four accepted prompt forms to a list of token-id lists."""
    vocab_size = context.tokenizer.vocab_size
    if isinstance(prompt, str):
        prompts = [context.tokenizer.encode(prompt)]
    elif all(isinstance(p, int) for p in prompt):
        prompts = [list(prompt)]
    elif all(isinstance(p, str) for p in prompt):
        prompts = [context.tokenizer.encode(p) for p in prompt]
    else:
        prompts = [list(p) for p in prompt]
    for i, ids in enumerate(prompts):
        param = "prompt" if len(prompts) == 1 else f"prompt[{i}]"
        if not ids:
            raise invalid_request("The prompt is empty; send at least one token.", param=param)
        bad = next((t for t in ids if not 0 <= t < vocab_size), None)
        if bad is not None:
            raise invalid_request(f"Token id {bad} is outside the vocabulary of {vocab_size}.", param=param)
    return prompts


async def _run_all(context: ServingContext, request_id: str, prompts: list[list[int]], params: SamplingParams,
                   n: int) -> AsyncIterator[tuple[int, object]]:
    """Yield (choice index, increment) for every prompt's n choices, one prompt after another."""
    for p, prompt_ids in enumerate(prompts):
        sub_id = request_id if len(prompts) == 1 else f"{request_id}-p{p}"
        async for index, output in context.generate_choices(sub_id, prompt_ids, params, n):
            yield p * n + index, output


async def _complete(context: ServingContext, body: CompletionRequest, completion_id: str, request_id: str,
                    prompts: list[list[int]], params: SamplingParams) -> JSONResponse:
    start = time.monotonic()
    num_choices = len(prompts) * body.n
    texts = [""] * num_choices
    reports: list[list[TokenLogprobs]] = [[] for _ in range(num_choices)]
    reasons: list[str | None] = [None] * num_choices
    counts = [0] * num_choices
    cached = [0] * len(prompts)
    async for index, output in _run_all(context, request_id, prompts, params, body.n):
        cached[index // body.n] = max(cached[index // body.n], output.num_cached_tokens)
        texts[index] += output.text
        reports[index].extend(output.logprobs)
        counts[index] = output.num_output_tokens
        if output.finished:
            reasons[index] = output.finish_reason
    choices = []
    for index in range(num_choices):
        logprobs = None
        if params.logprobs is not None:
            logprobs = _completion_logprobs(context, reports[index], reasons[index], body.return_tokens_as_token_ids, 0)
        choices.append(CompletionChoice(index=index, text=texts[index], logprobs=logprobs, finish_reason=reasons[index]))
    num_prompt_tokens = sum(len(p) for p in prompts)
    usage = Usage(prompt_tokens=num_prompt_tokens, completion_tokens=sum(counts),
                  total_tokens=num_prompt_tokens + sum(counts),
                  prompt_tokens_details=PromptTokensDetails(cached_tokens=sum(cached)))
    logger.info("Request %s finished: %d prompt + %d completion tokens in %.2f s", request_id,
                usage.prompt_tokens, usage.completion_tokens, time.monotonic() - start)
    response = CompletionResponse(id=completion_id, model=context.served_model_name, choices=choices, usage=usage)
    body = response.model_dump(exclude_none=True)
    for choice in body["choices"]:
        choice.setdefault("logprobs", None)
    return JSONResponse(body)


async def _stream(context: ServingContext, body: CompletionRequest, completion_id: str, request_id: str,
                  prompts: list[list[int]], params: SamplingParams) -> AsyncIterator[str]:
    created = int(time.time())
    start = time.monotonic()
    include_usage = body.stream_options is not None and body.stream_options.include_usage
    offsets = [0] * (len(prompts) * body.n)
    counts = [0] * len(offsets)
    try:
        async for index, output in _run_all(context, request_id, prompts, params, body.n):
            counts[index] = output.num_output_tokens
            logprobs = None
            if params.logprobs is not None:
                logprobs = _completion_logprobs(context, output.logprobs, output.finish_reason,
                                                body.return_tokens_as_token_ids, offsets[index])
            offsets[index] += len(output.text)
            if output.text or output.finished or logprobs is not None:
                choice = CompletionChoice(index=index, text=output.text, logprobs=logprobs,
                                          finish_reason=output.finish_reason if output.finished else None)
                payload = CompletionResponse(id=completion_id, created=created, model=context.served_model_name,
                                             choices=[choice]).model_dump(exclude_none=True)
                payload["choices"][0].setdefault("finish_reason", None)  # OpenAI sends null until the end
                yield sse_event(payload)
        num_prompt_tokens = sum(len(p) for p in prompts)
        usage = Usage(prompt_tokens=num_prompt_tokens, completion_tokens=sum(counts),
                      total_tokens=num_prompt_tokens + sum(counts))
        if include_usage:
            yield sse_event(CompletionResponse(id=completion_id, created=created, model=context.served_model_name,
                                               choices=[], usage=usage))
        logger.info("Request %s finished: %d prompt + %d completion tokens in %.2f s", request_id,
                    usage.prompt_tokens, usage.completion_tokens, time.monotonic() - start)
    except APIError as error:
        logger.info("Request %s failed while streaming with %d: %s", request_id, error.status_code, error.message)
        yield sse_event(error.body())
    except Exception as error:  # noqa: BLE001 - the stream must still end with an error event and [DONE]
        logger.exception("Request %s failed while streaming", request_id)
        yield sse_event(APIError(500, f"Internal server error ({type(error).__name__}); see the server log for "
                                      f"request {request_id}.", SERVER_ERROR).body())
    yield SSE_DONE


def _completion_logprobs(context: ServingContext, reports: list[TokenLogprobs], finish_reason: str | None,
                         as_token_ids: bool, text_offset: int) -> CompletionLogprobs:
    """Build the completions-shape log-probabilities; offsets count characters of the returned text."""
    tokenizer = context.tokenizer

    def token_text(token_id: int) -> str:
        return f"token_id:{token_id}" if as_token_ids else tokenizer.decode([token_id])

    result = CompletionLogprobs()
    for report in reports:
        text = tokenizer.decode([report.token_id])
        result.tokens.append(token_text(report.token_id))
        result.token_logprobs.append(report.logprob)
        result.top_logprobs.append({token_text(t): lp for t, lp in report.top} if report.top else None)
        result.text_offset.append(text_offset)
        is_stop = finish_reason == "stop" and report is reports[-1] and report.token_id in tokenizer.stop_token_ids
        if not is_stop:
            text_offset += len(text)
    return result
