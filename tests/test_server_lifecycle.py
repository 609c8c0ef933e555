"""Server lifecycle: SIGTERM drains running requests and refuses new ones."""

from __future__ import annotations

import json
import signal
import threading
import time

import httpx

from server_helpers import ServerProcess


def test_sigterm_drains_running_requests(served_checkpoint, tmp_path):
    checkpoint_dir, _ = served_checkpoint
    server = ServerProcess(["--model", str(checkpoint_dir), "--dtype", "float32", "--max-model-len", "4096",
                            "--kv-cache-gib", "0.05", "--shutdown-timeout", "60"], tmp_path / "server.log")
    events: list[str] = []

    def long_stream() -> None:
        body = {"model": checkpoint_dir.name, "prompt": [1, 2, 3], "max_tokens": 600, "temperature": 0,
                "stream": True, "ignore_eos": True}
        with httpx.stream("POST", f"{server.base_url}/v1/completions", json=body, timeout=120) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    events.append(line[len("data: "):])

    try:
        reader = threading.Thread(target=long_stream)
        reader.start()
        while len(events) < 5:
            time.sleep(0.05)
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        try:
            refused = httpx.post(f"{server.base_url}/v1/completions", timeout=10,
                                 json={"model": checkpoint_dir.name, "prompt": "hi", "max_tokens": 1})
            assert refused.status_code == 503
            assert refused.headers["retry-after"] == "1"
        except httpx.ConnectError:
            pass  # the listening socket is already closed, which also refuses the request
        reader.join(120)
        # Uvicorn re-raises the signal once it has shut down, so the exit status is SIGTERM's.
        assert server.process.wait(timeout=60) in (0, -signal.SIGTERM)
    finally:
        server.stop()
    assert events[-1] == "[DONE]"
    finishes = [json.loads(e)["choices"][0]["finish_reason"] for e in events[:-1]
                if json.loads(e)["choices"] and json.loads(e)["choices"][0]["finish_reason"]]
    assert finishes == ["length"]
    assert "draining" in server.log()
