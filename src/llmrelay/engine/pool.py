"""Worker threads that run generation jobs for one local model, off the event loop.

Each worker thread owns one :class:`ModelInstance`; jobs wait in one FIFO queue and the first
free instance takes the next. With ``instances: 1`` (the default) requests are served one at a
time in arrival order; ``max_queue`` bounds how many may wait before new ones get a 503.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator
from pathlib import Path

from llmrelay.engine.runner import Job, ModelInstance
from llmrelay.engine.sampling import GenerationParams
from llmrelay.errors import ServerError, ServiceUnavailable
from llmrelay.stream import Chunk

log = logging.getLogger(__name__)


class EnginePool:
    def __init__(
        self,
        path: Path,
        *,
        n_ctx: int,
        n_threads: int,
        instances: int = 1,
        max_queue: int = 256,
    ) -> None:
        self.path = path
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.max_queue = max_queue
        self._instance_count = max(1, instances)
        self._instances: list[ModelInstance] = []
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._waiting = 0

    def load(self) -> None:
        """Load the model instances (blocking: call from a thread at start-up)."""
        for _ in range(self._instance_count):
            self._instances.append(
                ModelInstance(self.path, n_ctx=self.n_ctx, n_threads=self.n_threads)
            )
        for i, instance in enumerate(self._instances):
            thread = threading.Thread(
                target=self._work, args=(instance,), name=f"llmrelay-engine-{i}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    @property
    def tokenizer(self) -> ModelInstance:
        return self._instances[0]

    @property
    def busy(self) -> int:
        return self._waiting

    @property
    def tokens_generated(self) -> int:
        return sum(instance.tokens_generated for instance in self._instances)

    def close(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join(timeout=30)
        for instance in self._instances:
            instance.close()
        self._instances.clear()
        self._threads.clear()

    def _work(self, instance: ModelInstance) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if job.cancelled.is_set():
                job.emit(None)
                continue
            try:
                instance.run(job)
            except Exception as exc:  # reported to the waiting request, never lost
                log.exception("generation failed")
                job.emit(exc)
            finally:
                job.emit(None)

    async def generate(
        self, prompt_tokens: list[int], params: GenerationParams
    ) -> AsyncIterator[Chunk]:
        if self._waiting >= self.max_queue:
            raise ServiceUnavailable(
                f"The local model is busy ({self._waiting} requests in progress or queued); "
                "retry shortly.",
                headers={"Retry-After": "1"},
                retryable=True,  # a channel serving the same model name may take it
            )
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[Chunk | BaseException | None] = asyncio.Queue()

        def emit(item: Chunk | BaseException | None) -> None:
            try:
                loop.call_soon_threadsafe(items.put_nowait, item)
            except RuntimeError:  # the loop is gone: the server is shutting down
                job.cancelled.set()

        job = Job(prompt_tokens, params, emit)
        self._waiting += 1
        self._jobs.put(job)
        try:
            while True:
                item = await items.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise ServerError("The local model failed while generating.") from item
                yield item
        finally:
            # Reached on completion, on error, and when the client goes away (cancellation):
            # the worker sees the flag before its next token and stops.
            job.cancelled.set()
            self._waiting -= 1
