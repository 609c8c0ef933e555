"""Drive `LLMEngine` from one thread and hand results to asyncio callers in another.

The model runs in one dedicated thread, so steps never block the event loop (PyTorch releases
the GIL inside its kernels). Callers submit requests from the loop; the engine thread pushes
every `RequestOutput` into the request's asyncio queue with `call_soon_threadsafe`.

`start()` runs the loop in a new thread. `run_here()` runs it in the calling thread, which the
server uses for the main thread: the thread that loaded the model already owns PyTorch's OpenMP
worker team, and a second team in another thread makes every matrix product slower
(measured: bf16 matrix-vector products at ~10 GB/s from a second thread against ~14 GB/s).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import torch

from kimi_k25.engine.llm_engine import LLMEngine
from kimi_k25.engine.sampling import SamplingParams
from kimi_k25.engine.sequence import RequestOutput

logger = logging.getLogger(__name__)


class EngineDeadError(RuntimeError):
    """The engine thread stopped after an internal error; the server must be restarted."""


class QueueFullError(RuntimeError):
    """More requests are waiting than the server accepts; the client should retry later."""


@dataclass
class _Submit:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    media_embeds: torch.Tensor | None
    loop: asyncio.AbstractEventLoop
    outputs: asyncio.Queue


@dataclass
class _Abort:
    request_id: str


class AsyncEngine:
    def __init__(self, engine: LLMEngine, max_waiting_requests: int = 256) -> None:
        self.engine = engine
        self.max_waiting_requests = max_waiting_requests
        self._inbox: queue.Queue = queue.Queue()
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._stopping = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="kimi-k25-engine", daemon=True)
        self._keep_running: Callable[[], bool] = lambda: True

    def start(self) -> None:
        self._thread.start()
        logger.info("Engine thread started")

    def run_here(self, keep_running: Callable[[], bool]) -> None:
        """Run the engine loop in the calling thread until `keep_running()` turns false."""
        self._thread = threading.current_thread()
        self._keep_running = keep_running
        logger.info("Engine loop running in thread %s", self._thread.name)
        self._run()
        logger.info("Engine loop stopped")

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._inbox.put(None)
        if self._thread is not threading.current_thread() and self._thread.is_alive():
            self._thread.join(timeout)
            logger.info("Engine thread stopped")

    @property
    def num_waiting(self) -> int:
        """Requests submitted but not yet in the running batch (read without locking: an estimate)."""
        return self._inbox.qsize() + len(self.engine.scheduler.waiting)

    @property
    def is_alive(self) -> bool:
        return self._thread.is_alive() and self._error is None

    async def generate(self, request_id: str, prompt_ids: list[int], params: SamplingParams,
                       media_embeds: torch.Tensor | None = None) -> AsyncIterator[RequestOutput]:
        """Yield the request's increments until it finishes; abort it if the caller stops early."""
        if not self.is_alive:
            raise EngineDeadError("the inference engine is not running")
        batch_full = len(self.engine.scheduler.running) + self.num_waiting >= self.engine.scheduler.max_num_seqs
        if batch_full and self.num_waiting >= self.max_waiting_requests:
            raise QueueFullError(f"{self.num_waiting} requests are already waiting (limit "
                                 f"{self.max_waiting_requests}); retry shortly")
        outputs: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        self._inbox.put(_Submit(request_id, prompt_ids, params, media_embeds, loop, outputs))
        finished = False
        try:
            while True:
                item = await outputs.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finished:
                    finished = True
                    return
        finally:
            if not finished:
                self._inbox.put(_Abort(request_id))

    # ----- engine thread -------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stopping.is_set() and self._keep_running():
                self._drain_inbox(block=not self.engine.has_unfinished_requests())
                if self.engine.has_unfinished_requests():
                    for output in self.engine.step():
                        self._deliver(output.request_id, output)
                        if output.finished:
                            self._streams.pop(output.request_id, None)
        except BaseException as error:  # noqa: BLE001 - reported to every waiting request
            self._error = error
            logger.exception("Engine thread failed; failing %d open requests", len(self._streams))
            for request_id in list(self._streams):
                self._deliver(request_id, EngineDeadError(f"the inference engine failed: {error}"))
            self._streams.clear()

    def _drain_inbox(self, block: bool) -> None:
        while True:
            try:
                item = self._inbox.get(block=block, timeout=0.5 if block else None)
            except queue.Empty:
                return
            block = False
            if item is None:
                return
            if isinstance(item, _Abort):
                if item.request_id in self._streams:
                    self.engine.abort_request(item.request_id)
                    self._streams.pop(item.request_id, None)
                    logger.info("Aborted request %s", item.request_id)
                continue
            self._streams[item.request_id] = (item.loop, item.outputs)
            try:
                self.engine.add_request(item.request_id, item.prompt_ids, item.params, item.media_embeds)
            except ValueError as error:
                self._deliver(item.request_id, error)
                self._streams.pop(item.request_id, None)

    def _deliver(self, request_id: str, item: RequestOutput | BaseException) -> None:
        stream = self._streams.get(request_id)
        if stream is None:
            return
        loop, outputs = stream
        try:
            loop.call_soon_threadsafe(outputs.put_nowait, item)
        except RuntimeError:  # the caller's loop has closed
            self._streams.pop(request_id, None)
