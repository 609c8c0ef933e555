"""Start `kimi-k25 serve` in a subprocess on a free 127.0.0.1 port for end-to-end tests."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    def __init__(self, args: list[str], log_path: Path, startup_timeout: float = 120.0) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "w")
        command = [sys.executable, "-m", "kimi_k25", "serve", "--host", "127.0.0.1", "--port", str(self.port), *args]
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.base_url}/health", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server did not become healthy in {startup_timeout} s:\n{self.log()}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self._log.close()


def openai_client(base_url: str, timeout: float = 60) -> openai.OpenAI:
    """An `openai` client for a test server, with retries off so that errors surface at once."""
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=timeout)


def chat_reply_as_served(tokenizer, tokens: list[int]) -> tuple[str, int]:
    """Decode generated tokens as the chat endpoint does; return the text and the completion token count.

    The reply ends at the first end-of-turn token, which counts as generated but is not text.
    Special tokens are dropped except the reasoning markers, which the reasoning parser reads.
    """
    stop_at = next((i for i, t in enumerate(tokens) if t in tokenizer.stop_token_ids), None)
    kept = tokens if stop_at is None else tokens[:stop_at]
    visible = {tokenizer.think_start_id, tokenizer.think_end_id}
    kept = [t for t in kept if t in visible or not tokenizer.is_special(t)]
    return tokenizer.decode(kept), len(tokens) if stop_at is None else stop_at + 1
