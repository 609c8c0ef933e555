"""The FastAPI application: routes, request ids and access logging.

    POST /v1/chat/completions   chat, JSON or Server-Sent Events
    POST /v1/completions        text completion from text or token ids
    GET  /v1/models             the served model
    GET  /health                200 while the engine runs
    GET  /metrics               Prometheus metrics
"""

from __future__ import annotations

import logging
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kimi_k25.server.chat import create_chat_completion
from kimi_k25.server.completions import create_completion
from kimi_k25.server.context import ServingContext, cancel_on_disconnect
from kimi_k25.server.errors import SERVICE_UNAVAILABLE, APIError, install_error_handlers
from kimi_k25.server.protocol import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList

logger = logging.getLogger(__name__)


class RequestIdMiddleware:
    """Give every HTTP request an id (the client's `x-request-id`, or a new one) and echo it back.

    A plain ASGI middleware, because Starlette's BaseHTTPMiddleware wraps the receive channel
    in a way that hides client disconnects from the handlers.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        request_id = headers.get(b"x-request-id", b"").decode("latin-1")[:128] or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        start = time.monotonic()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode("latin-1"))]
                logger.debug("%s %s -> %d after %.3f s (request %s)", scope.get("method"), scope.get("path"),
                             message["status"], time.monotonic() - start, request_id)
            await send(message)

        await self.app(scope, receive, send_with_id)


def create_app(context: ServingContext) -> FastAPI:
    app = FastAPI(title="kimi-k25", summary="OpenAI-compatible API for Kimi K2.5 checkpoints")
    app.state.context = context
    install_error_handlers(app)

    app.add_middleware(RequestIdMiddleware)

    @app.get("/health")
    async def health() -> Response:
        if not context.engine.is_alive:
            raise APIError(503, "The inference engine is not running; restart the server.", SERVICE_UNAVAILABLE)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def metrics() -> Response:
        registry = context.engine.engine.metrics.registry
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

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
        request_id = request.state.request_id
        return await cancel_on_disconnect(request, request_id, create_chat_completion(context, body, request_id))

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        request_id = request.state.request_id
        return await cancel_on_disconnect(request, request_id, create_completion(context, body, request_id))

    return app
