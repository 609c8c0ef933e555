"""State shared by the request handlers, and the steps chat and text completions have in common."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import uuid
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from kimi_k25.chat.format import ChatFormat
from kimi_k25.engine.async_engine import AsyncEngine, EngineDeadError, QueueFullError
from kimi_k25.engine.llm_engine import PromptTooLongError
from kimi_k25.engine.sampling import SamplingParams
from kimi_k25.engine.sequence import RequestOutput
from kimi_k25.media.cache import MediaCache
from kimi_k25.media.processor import MediaProcessor
from kimi_k25.server.errors import (
    NOT_FOUND,
    RATE_LIMITED,
    RETRY_AFTER_SECONDS,
    SERVER_ERROR,
    SERVICE_UNAVAILABLE,
    APIError,
    invalid_request,
)
from kimi_k25.server.protocol import SamplingFields
from kimi_k25.tokenizer.tokenizer import KimiTokenizer

logger = logging.getLogger(__name__)

SSE_DONE = "data: [DONE]\n\n"


@dataclass
class GenerationDefaults:
    """Sampling defaults from the checkpoint's generation_config.json; OpenAI's defaults otherwise."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0

    @classmethod
    def from_dir(cls, checkpoint_dir: Path) -> GenerationDefaults:
        path = checkpoint_dir / "generation_config.json"
        if not path.is_file():
            return cls()
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            logger.warning("Ignoring %s: not valid JSON (%s)", path, error)
            return cls()
        defaults = cls()
        for name in ("temperature", "top_p", "top_k"):
            if isinstance(raw.get(name), (int, float)):
                setattr(defaults, name, type(getattr(defaults, name))(raw[name]))
        return defaults


@dataclass
class ServingContext:
    engine: AsyncEngine
    tokenizer: KimiTokenizer
    chat_format: ChatFormat
    served_model_name: str
    model_path: str
    max_model_len: int
    defaults: GenerationDefaults = field(default_factory=GenerationDefaults)
    # None when the model has no vision tower; requests with media then get a 400.
    media_processor: MediaProcessor | None = None
    media_cache: MediaCache | None = None
    # One vision-tower forward at a time, beside the engine thread's steps.
    encode_lock: threading.Lock = field(default_factory=threading.Lock)
    # Set on SIGTERM: new requests get 503 while running ones finish.
    draining: bool = False

    def check_capacity(self) -> None:
        """Refuse new work while shutting down (503) or when too many requests wait (429)."""
        retry = {"Retry-After": str(RETRY_AFTER_SECONDS)}
        if self.draining:
            raise APIError(503, "The server is shutting down; retry against another replica or after restart.",
                           SERVICE_UNAVAILABLE, code="shutting_down", headers=retry)
        engine = self.engine
        scheduler = engine.engine.scheduler
        # A request waits only when the running batch is full; then at most max_waiting_requests may.
        batch_full = len(scheduler.running) + engine.num_waiting >= scheduler.max_num_seqs
        if batch_full and engine.num_waiting >= engine.max_waiting_requests:
            raise APIError(429, f"The server is busy: {engine.num_waiting} requests are waiting (limit "
                                f"{engine.max_waiting_requests}); retry shortly.", RATE_LIMITED, code="queue_full",
                           headers=retry)

    def check_model(self, name: str) -> None:
        if name != self.served_model_name:
            raise APIError(404, f"The model '{name}' does not exist. This server serves "
                                f"'{self.served_model_name}'; set \"model\" to that name.",
                           NOT_FOUND, param="model", code="model_not_found")

    def sampling_params(self, body: SamplingFields, max_tokens: int | None, logprobs: int | None,
                        skip_special_tokens: bool, keep_special_ids: frozenset[int] = frozenset()) -> SamplingParams:
        """Turn request fields into engine sampling parameters, with checkpoint defaults for unset ones."""
        if body.stream_options is not None and not body.stream:
            raise invalid_request("stream_options is only allowed when stream is true; set \"stream\": true or "
                                  "remove stream_options.", param="stream_options")
        for token_id in body.stop_token_ids or []:
            if not 0 <= token_id < self.tokenizer.vocab_size:
                raise invalid_request(f"stop_token_ids contains {token_id}, outside the vocabulary of "
                                      f"{self.tokenizer.vocab_size}.", param="stop_token_ids")
        try:
            return SamplingParams(
                max_tokens=max_tokens,
                temperature=self.defaults.temperature if body.temperature is None else body.temperature,
                top_p=self.defaults.top_p if body.top_p is None else body.top_p,
                top_k=self.defaults.top_k if body.top_k is None else body.top_k,
                frequency_penalty=body.frequency_penalty,
                presence_penalty=body.presence_penalty,
                seed=body.seed,
                stop=body.stop_list(),
                stop_token_ids=list(body.stop_token_ids or []),
                ignore_eos=body.ignore_eos,
                logprobs=logprobs,
                skip_special_tokens=skip_special_tokens,
                keep_special_ids=keep_special_ids,
            )
        except ValueError as error:
            raise invalid_request(f"Invalid sampling parameters: {error}.") from error

    def check_prompt_length(self, num_prompt_tokens: int, param: str) -> None:
        limit = self.max_model_len
        if num_prompt_tokens >= limit:
            raise APIError(400, f"This model's maximum context length is {limit} tokens, but the prompt has "
                                f"{num_prompt_tokens} tokens. Shorten the {param} to at most {limit - 1} tokens.",
                           param=param, code="context_length_exceeded")

    async def generate_choices(self, request_id: str, prompt_ids: list[int], params: SamplingParams, n: int,
                               media_embeds: Any = None) -> AsyncIterator[tuple[int, RequestOutput]]:
        """Run n samples of one prompt concurrently and yield (choice index, increment) as they come.

        With a seed, choice i uses seed + i, so the choices differ and the whole response is
        reproducible.
        """
        streams = []
        # Clients may reuse an x-request-id, so the engine gets ids that are unique per call.
        engine_id = f"{request_id}-{uuid.uuid4().hex[:8]}"
        for index in range(n):
            choice_params = params if params.seed is None or index == 0 else replace(params, seed=params.seed + index)
            sub_id = engine_id if n == 1 else f"{engine_id}-{index}"
            streams.append(self.engine.generate(sub_id, prompt_ids, choice_params, media_embeds))
        try:
            if n == 1:
                async for output in streams[0]:
                    yield 0, output
                return
            async for item in _merge(streams):
                yield item
        except PromptTooLongError as error:
            raise APIError(400, str(error), param="messages", code="context_length_exceeded") from error
        except EngineDeadError as error:
            raise APIError(503, str(error), SERVICE_UNAVAILABLE) from error
        except QueueFullError as error:
            raise APIError(429, f"The server is busy: {error}.", RATE_LIMITED, code="queue_full",
                           headers={"Retry-After": str(RETRY_AFTER_SECONDS)}) from error
        except ValueError as error:
            raise invalid_request(str(error)) from error
        except RuntimeError as error:
            logger.exception("Request %s failed in the engine", request_id)
            raise APIError(500, f"Generation failed: {error}", SERVER_ERROR) from error


# Status of a request whose client closed the connection before the response (nginx's convention).
CLIENT_CLOSED_REQUEST = 499


async def _wait_for_disconnect(request: Request) -> None:
    """Return once the client has closed the connection (the request body is already read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def cancel_on_disconnect(request: Request, request_id: str, work: Coroutine[Any, Any, Response]) -> Response:
    """Run a non-streaming handler, cancelling it (and aborting its generation) if the client leaves.

    Streaming responses need no watcher: Starlette cancels their generator on disconnect.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    if task.cancelled():
        logger.info("Request %s: the client disconnected; generation aborted", request_id)
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    return task.result()


async def _merge(streams: list[AsyncIterator[RequestOutput]]) -> AsyncIterator[tuple[int, RequestOutput]]:
    """Interleave several async iterators, tagging each item with its iterator's index."""
    queue: asyncio.Queue = asyncio.Queue()
    finished = object()

    async def pump(index: int, stream: AsyncIterator[RequestOutput]) -> None:
        try:
            async for item in stream:
                await queue.put((index, item))
        except BaseException as error:  # noqa: BLE001 - re-raised in the consumer
            await queue.put((index, error))
        finally:
            await queue.put((index, finished))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    remaining = len(tasks)
    try:
        while remaining:
            index, item = await queue.get()
            if item is finished:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        # Cancelling a pump closes its stream, which aborts that request in the engine.
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def sse_event(payload: Any) -> str:
    """Frame one Server-Sent Event carrying a JSON payload."""
    if hasattr(payload, "model_dump"):
        payload = payload.model_dump(exclude_none=True)
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"data: {text}\n\n"
