"""Build the serving stack from a checkpoint directory and run it under uvicorn."""

from __future__ import annotations

import logging
import os
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


def build_context(options: ServeOptions) -> ServingContext:
    """Load tokenizer, chat format and weights, and start the engine thread."""
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
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is only "
                         f"{model.config.text.vocab_size}")

    engine = LLMEngine(model, tokenizer, options.engine or EngineConfig())
    # Converting the vocabulary for constrained decoding takes about a second; do it in the
    # background so the first request with tool_choice or response_format does not wait for it.
    threading.Thread(target=lambda: engine.grammar_compiler.ll_tokenizer, name="grammar-warmup", daemon=True).start()
    async_engine = AsyncEngine(engine)
    async_engine.start()
    default_name = "kimi-k25-default" if options.model is None else model_dir.name
    return ServingContext(
        engine=async_engine,
        tokenizer=tokenizer,
        chat_format=chat_format,
        served_model_name=options.served_model_name or default_name,
        model_path=str(model_dir),
        max_model_len=engine.max_model_len,
        defaults=GenerationDefaults.from_dir(model_dir),
    )


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
    try:
        # Request logging is ours (one line per request with its id), so uvicorn's access log is off.
        uvicorn.run(app, host=options.host, port=options.port, log_level=options.log_level, access_log=False)
    finally:
        context.engine.stop()
        logger.info("Server stopped")
