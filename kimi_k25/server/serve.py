"""Build the serving stack from a checkpoint directory and run it under uvicorn."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import uvicorn

from kimi_k25.chat.format import ChatFormat
from kimi_k25.checkpoint.loader import load_checkpoint
from kimi_k25.engine.async_engine import AsyncEngine
from kimi_k25.engine.llm_engine import EngineConfig, LLMEngine
from kimi_k25.media.cache import MediaCache
from kimi_k25.media.config import MediaConfig, MediaLimits
from kimi_k25.media.processor import MediaProcessor
from kimi_k25.media.sources import MediaSourcePolicy
from kimi_k25.server.app import create_app
from kimi_k25.server.context import GenerationDefaults, ServingContext
from kimi_k25.tokenizer.tokenizer import KimiTokenizer

logger = logging.getLogger(__name__)

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "default_model"
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass
class ServeOptions:
    model: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    served_model_name: str | None = None
    dtype: str = "bfloat16"
    threads: int | None = None
    engine: EngineConfig | None = None
    log_level: str = "info"
    allowed_local_media_path: str | None = None
    allowed_media_domains: str | None = None
    max_media_items: int | None = None
    max_waiting_requests: int = 256
    shutdown_timeout: float = 30.0


def build_context(options: ServeOptions) -> ServingContext:
    """Load tokenizer, chat format and weights; the caller starts the engine loop."""
    model_dir = Path(options.model) if options.model else DEFAULT_MODEL_DIR
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} is not a checkpoint directory: it has no config.json")
    threads = options.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    logger.info("Loading %s (dtype %s, %d threads)", model_dir, options.dtype, threads)

    start = time.monotonic()
    tokenizer = KimiTokenizer.from_dir(model_dir)
    chat_format = ChatFormat.from_dir(model_dir)
    model = load_checkpoint(model_dir, dtype=DTYPES[options.dtype])
    logger.info("Loaded weights in %.1f s", time.monotonic() - start)
    if model.config.text.vocab_size < tokenizer.vocab_size:
        # Requests whose text encodes to ids the model lacks are rejected one by one with a 400.
        logger.warning("The tokenizer has %d tokens but the model's vocab_size is only %d; prompts that use the "
                       "missing ids will be rejected", tokenizer.vocab_size, model.config.text.vocab_size)

    engine = LLMEngine(model, tokenizer, options.engine or EngineConfig())
    # Converting the vocabulary for constrained decoding takes about a second. It runs in the
    # background, so the first request with tool_choice or response_format does not wait for it.
    threading.Thread(target=lambda: engine.grammar_compiler.ll_tokenizer, name="grammar-warmup", daemon=True).start()
    async_engine = AsyncEngine(engine, max_waiting_requests=options.max_waiting_requests)
    default_name = "kimi-k25-default" if options.model is None else model_dir.name
    media_processor, media_cache = build_media(model_dir, options) if model.has_vision else (None, None)
    return ServingContext(
        engine=async_engine,
        tokenizer=tokenizer,
        chat_format=chat_format,
        served_model_name=options.served_model_name or default_name,
        model_path=str(model_dir),
        max_model_len=engine.max_model_len,
        defaults=GenerationDefaults.from_dir(model_dir),
        media_processor=media_processor,
        media_cache=media_cache,
    )


def build_media(model_dir: Path, options: ServeOptions) -> tuple[MediaProcessor, MediaCache]:
    """Preprocessing from the checkpoint's preprocessor_config.json and URL rules from the options."""
    limits = MediaLimits() if options.max_media_items is None else MediaLimits(max_media_items=options.max_media_items)
    config = MediaConfig.from_dir(model_dir, limits=limits)
    policy = MediaSourcePolicy.from_options(options.allowed_local_media_path, options.allowed_media_domains)
    if policy.allowed_local_media_path is not None and not policy.allowed_local_media_path.is_dir():
        raise FileNotFoundError(f"--allowed-local-media-path {policy.allowed_local_media_path} is not a directory")
    logger.info("Images and video enabled: local files %s, remote domains %s",
                policy.allowed_local_media_path or "off", ", ".join(sorted(policy.allowed_media_domains)) or "off")
    return MediaProcessor(config, policy), MediaCache()


class DrainingServer(uvicorn.Server):
    """Uvicorn server that, on SIGTERM or Ctrl+C, rejects new requests with 503 while running ones finish.

    Uvicorn then stops accepting connections and waits up to `timeout_graceful_shutdown` seconds
    for open requests; those still running after that are cancelled, which aborts their generation.
    """

    def __init__(self, config: uvicorn.Config, context: ServingContext) -> None:
        super().__init__(config)
        self.context = context

    def handle_exit(self, sig: int, frame) -> None:
        if not self.context.draining:
            logger.info("Shutting down: draining running requests for up to %.0f s",
                        self.config.timeout_graceful_shutdown or 0)
        self.context.draining = True
        super().handle_exit(sig, frame)


def check_port_free(host: str, port: int) -> None:
    """Fail before the slow model load if the address cannot be bound."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError as error:
        raise OSError(f"cannot listen on {host}:{port} ({error.strerror}); stop the other server or pass "
                      f"another --port") from error


def serve(options: ServeOptions) -> None:
    check_port_free(options.host, options.port)
    context = build_context(options)
    app = create_app(context)
    logger.info("Serving %s at http://%s:%d/v1", context.served_model_name, options.host, options.port)
    # Request logging is ours (one line per request with its id), so uvicorn's access log is off.
    config = uvicorn.Config(app, host=options.host, port=options.port, log_level=options.log_level,
                            access_log=False, timeout_graceful_shutdown=options.shutdown_timeout)
    server = DrainingServer(config, context)
    http_thread = threading.Thread(target=server.run, name="http", daemon=True)
    # Uvicorn installs signal handlers only in the main thread, which runs the engine here, so the
    # handlers are installed for it: SIGTERM and Ctrl+C start the drain.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, server.handle_exit)
    http_thread.start()
    try:
        context.engine.run_here(keep_running=http_thread.is_alive)
    finally:
        server.should_exit = True
        http_thread.join(options.shutdown_timeout + 5)
        logger.info("Server stopped")
