"""The FastAPI application: routes, request ids and access logging.

    POST /v1/chat/completions   chat, JSON or Server-Sent Events
    POST /v1/completions        text completion from text or token ids
    GET  /v1/models             the served model
    GET  /health                200 while the engine runs
"""

from __future__ import annotations

import logging
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from kimi_k25.server.chat import create_chat_completion
from kimi_k25.server.completions import create_completion
from kimi_k25.server.context import ServingContext
from kimi_k25.server.errors import SERVICE_UNAVAILABLE, APIError, install_error_handlers
from kimi_k25.server.protocol import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList

logger = logging.getLogger(__name__)


def create_app(context: ServingContext) -> FastAPI:
    app = FastAPI(title="kimi-k25", summary="OpenAI-compatible API for Kimi K2.5 checkpoints")
    app.state.context = context
    install_error_handlers(app)

    @app.middleware("http")
    async def _request_id(request: Request, call_next):
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        request.state.request_id = request_id
        start = time.monotonic()
        response = await call_next(request)
        response.headers["x-request-id"] = request_id
        logger.debug("%s %s -> %d in %.3f s (request %s)", request.method, request.url.path, response.status_code,
                     time.monotonic() - start, request_id)
        return response

    @app.get("/health")
    async def health() -> Response:
        if not context.engine.is_alive:
            raise APIError(503, "The inference engine is not running; restart the server.", SERVICE_UNAVAILABLE)
        return JSONResponse({"status": "ok"})

    @app.get("/v1/models")
    async def list_models() -> ModelList:
        return ModelList(data=[ModelCard(id=context.served_model_name, root=context.model_path,
                                         max_model_len=context.max_model_len)])

    @app.get("/v1/models/{model_id:path}")
    async def retrieve_model(model_id: str) -> ModelCard:
        context.check_model(model_id)
        return ModelCard(id=context.served_model_name, root=context.model_path, max_model_len=context.max_model_len)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        return await create_chat_completion(context, body, request.state.request_id)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        return await create_completion(context, body, request.state.request_id)

    return app
