"""Batching of generation requests inside one replica: ``Batcher``, and ``BatchedEngine``,
the ``EngineClient`` that puts a batch-level ``Engine`` (or ``EngineProcess``) behind one.

Why not ``@serve.batch``: it splits batches by multiplexed model id (so a batch would never
mix adapters) and its streaming mode yields one item per request per step, while the engine
already streams per-row deltas from its own decoding loop. This loop collects requests into a
batch, runs one engine call in a worker thread, and routes every delta and result back to its
request's queue.

Requests arriving while a batch runs join it (continuous batching, the default): they go
into the running call's ``RequestInbox`` and the engine prefills them and adds them to the
batch at its next step, up to ``max_batch_size`` rows; the call ends when nothing is left
(this loop, which sees every result come back, closes the inbox then). Why: a request arriving
mid-batch starts within a few steps instead of after the batch, and rows freed by finished
requests are refilled. Its price is a prefill forward per group of joiners, which makes it
a little slower than static batches in their best case, equal lengths in a closed loop at
exactly the batch size (benchmarks/RESULTS.md, "Continuous vs static batching"). With
``continuous=False`` requests arriving while a batch runs form the next batch instead.

How long to wait before starting a batch is adaptive. A fixed wait either adds its full delay
to every lone request or, under load, splits closed-loop clients into two half batches that
alternate forever (the clients of the running batch are still travelling back through the
proxy when the next batch starts; benchmarks/RESULTS.md, "Figures behind design choices").
So the batcher remembers the concurrency it has seen lately (rows running plus
rows waiting, the peak over the last ``window_s``) and waits — at most ``wait_s`` — only until
that many rows are waiting. A lone client never waits; a steady crowd fills whole batches.
Nothing here imports Ray: it is tested with a plain asyncio loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llmvm_ray.engine.inbox import RequestInbox
from llmvm_ray.engine.process import EngineProcess
from llmvm_ray.engine.protocol import EngineClient, Messages
from llmvm_ray.engine.types import AdapterRef, GenerationRequest, GenerationResult, StreamDelta

if TYPE_CHECKING:
    from llmvm_ray.config import ModelConfig
    from llmvm_ray.engine.engine import Engine

logger = logging.getLogger(__name__)

RunBatch = Callable[
    [
        list[GenerationRequest],
        Callable[[StreamDelta], None] | None,
        Callable[[str], bool],
        Callable[[GenerationResult], None],
        RequestInbox | None,
    ],
    list[GenerationResult],
]

_DONE = object()


@dataclass
class _Pending:
    request: GenerationRequest
    streams: bool  # wants its deltas (else only the result)
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    aborted: bool = False


class Batcher:
    """Collects requests into batches and runs them one batch at a time.

    ``run_batch(requests, on_delta, should_abort, on_result, inbox)`` is the engine call
    (``Engine.generate``; ``on_delta`` gets the deltas of the requests marked
    ``stream=True``, the others make none; ``on_result`` takes each request's result as
    soon as it is finished, so a short answer leaves before the batch's longest; ``inbox``
    brings requests that arrive while it runs, None with ``continuous=False``); it runs in a
    thread so the event loop keeps accepting requests while a batch decodes.
    """

    def __init__(
        self,
        run_batch: RunBatch,
        max_batch_size: int,
        wait_s: float,
        window_s: float = 1.0,
        continuous: bool = True,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self._run_batch = run_batch
        self._max_batch_size = max_batch_size
        self._continuous = continuous
        self._wait_s = wait_s
        self._window_s = window_s
        self._pending: list[_Pending] = []
        self._running_rows = 0
        # The running batch, while it takes joiners: its inbox, its requests by id (the
        # engine thread's callbacks look them up) and how many still owe a result.
        self._inbox: RequestInbox | None = None
        self._by_id: dict[str, _Pending] = {}
        self._owed = 0
        # Peak concurrency of the current and the previous window: a cheap sliding maximum.
        self._peak = (0, 0)
        self._window_started = time.monotonic()
        self._wakeup = asyncio.Event()
        self._loop_task: asyncio.Task | None = None
        self.batches_run = 0
        self.sequences_run = 0

    def _ensure_loop(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.get_running_loop().create_task(self._serve_forever())

    async def stream(
        self, request: GenerationRequest
    ) -> AsyncIterator[StreamDelta | GenerationResult]:
        """Yield the request's deltas as they decode, then its ``GenerationResult``.

        Closing the iterator early (a client went away) aborts the request's rows at the
        next decoding step instead of decoding them to ``max_tokens``.
        """
        async for event in self._submit(request, streams=True):
            yield event

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """Run a request to completion and return its result."""
        async with contextlib.aclosing(self._submit(request, streams=False)) as events:
            async for event in events:
                return event  # the only event: no deltas are made for it
        raise AssertionError("batch finished without a result")

    async def _submit(
        self, request: GenerationRequest, streams: bool
    ) -> AsyncIterator[StreamDelta | GenerationResult]:
        self._ensure_loop()
        if request.stream != streams:
            request = dataclasses.replace(request, stream=streams)
        item = _Pending(request, streams)
        if not self._join(item):
            self._pending.append(item)
            self._wakeup.set()
        self._observe(self._running_rows + self._rows_waiting())
        try:
            while True:
                event = await item.queue.get()
                if event is _DONE:
                    return
                if isinstance(event, BaseException):
                    raise event
                yield event
        finally:
            item.aborted = True

    def check(self) -> None:
        """Raise if the batch loop died (Serve's health check calls this)."""
        task = self._loop_task
        if task is not None and task.done() and not task.cancelled() and task.exception():
            raise RuntimeError(f"batch loop died: {task.exception()!r}")

    def _take_batch(self) -> list[_Pending]:
        batch: list[_Pending] = []
        rows = 0
        while self._pending:
            item = self._pending[0]
            if item.aborted:
                self._pending.pop(0)
                continue
            n = item.request.params.n
            if batch and rows + n > self._max_batch_size:
                break
            batch.append(self._pending.pop(0))
            rows += n
        return batch

    def _rows_waiting(self) -> int:
        return sum(p.request.params.n for p in self._pending if not p.aborted)

    def _observe(self, concurrency: int) -> None:
        now = time.monotonic()
        current, previous = self._peak
        if now - self._window_started >= self._window_s:
            # A whole idle window forgets the old peak; otherwise it slides by one window.
            stale = now - self._window_started >= 2 * self._window_s
            current, previous = 0, 0 if stale else current
            self._window_started = now
        self._peak = (max(current, concurrency), previous)

    def batch_target(self) -> int:
        """Rows worth waiting for: the recent peak concurrency, capped at the batch size."""
        self._observe(0)
        return max(1, min(self._max_batch_size, max(self._peak)))

    async def _serve_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            # Give the clients seen lately a moment to join, at most wait_s.
            deadline = loop.time() + self._wait_s
            while self._rows_waiting() < self.batch_target():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
            batch = self._take_batch()
            if batch:
                await self._run(batch, loop)

    def _join(self, item: _Pending) -> bool:
        """Hand ``item`` to the running batch; False when there is none to join."""
        if self._inbox is None:
            return False
        # Registered before it is put: the engine thread may look it up at once.
        self._by_id[item.request.request_id] = item
        if not self._inbox.put(item.request):
            del self._by_id[item.request.request_id]
            return False
        self._owed += 1
        self._running_rows += item.request.params.n
        self.sequences_run += item.request.params.n
        return True

    def _settle(self, item: _Pending, outcome: GenerationResult | BaseException) -> None:
        """Deliver ``item``'s result (or error) once; close the inbox when nothing is owed.
        On the event loop."""
        if self._by_id.pop(item.request.request_id, None) is None:
            return  # already settled
        item.queue.put_nowait(outcome)
        if not isinstance(outcome, BaseException):
            item.queue.put_nowait(_DONE)
        self._owed -= 1
        self._running_rows -= item.request.params.n
        if self._owed == 0 and self._inbox is not None:
            self._inbox.close()  # nothing running, nothing waiting: let the call end
            self._inbox = None

    async def _run(self, batch: list[_Pending], loop: asyncio.AbstractEventLoop) -> None:
        by_id = self._by_id  # the engine thread reads it; joiners are added on the loop

        def on_delta(delta: StreamDelta) -> None:
            item = by_id.get(delta.request_id)
            if item is not None and item.streams and not item.aborted:
                loop.call_soon_threadsafe(item.queue.put_nowait, delta)

        def should_abort(request_id: str) -> bool:
            item = by_id.get(request_id)
            return item is None or item.aborted

        def on_result(result: GenerationResult) -> None:
            item = by_id.get(result.request_id)
            if item is not None:
                loop.call_soon_threadsafe(self._settle, item, result)

        def reject(request_id: str, error: Exception) -> None:
            item = by_id.get(request_id)
            if item is not None:
                loop.call_soon_threadsafe(self._settle, item, error)

        for item in batch:
            by_id[item.request.request_id] = item
        self._owed = len(batch)
        self._running_rows = sum(item.request.params.n for item in batch)
        self.batches_run += 1
        self.sequences_run += self._running_rows
        if self._continuous:
            self._inbox = RequestInbox(self._max_batch_size, reject)
            while self._pending:  # more than one batch was waiting: the rest joins as rows free
                item = self._pending.pop(0)
                if not item.aborted:
                    self._join(item)
        try:
            # Requests that do not stream are marked (``GenerationRequest.stream``): the
            # engine makes no deltas for them, so one callback serves every batch.
            results = await asyncio.to_thread(
                self._run_batch,
                [item.request for item in batch],
                on_delta,
                should_abort,
                on_result,
                self._inbox,
            )
        except Exception as exc:  # one engine failure fails this batch's requests, not the loop
            logger.exception("batch of %d requests failed", len(by_id))
            for item in list(by_id.values()):
                self._settle(item, exc)
            return
        finally:
            if self._inbox is not None:  # the call ended (or failed) with its inbox open
                self._inbox.close()
                self._inbox = None
        for result in results:
            item = by_id.get(result.request_id)
            if item is not None:  # its on_result callback has not been handled yet
                self._settle(item, result)


# Prompts up to this many characters are tokenized on the event loop (a fraction of a ms,
# less than a thread hop: benchmarks/RESULTS.md, "Figures behind design choices").
_INLINE_PROMPT_CHARS = 500


class BatchedEngine(EngineClient):
    """The ``EngineClient`` of a batch-level engine: an ``Engine`` in this process, or an
    ``EngineProcess`` running one in a child, behind a ``Batcher``."""

    def __init__(self, engine: Engine | EngineProcess, model_config: ModelConfig) -> None:
        self._engine = engine
        self._process = engine if isinstance(engine, EngineProcess) else None
        self.max_model_len = engine.max_model_len
        self._batcher = Batcher(
            engine.generate,
            max_batch_size=model_config.max_batch_size,
            wait_s=model_config.batch_wait_timeout_s,
            continuous=model_config.continuous_batching,
        )

    async def generate(
        self, request: GenerationRequest, messages: Messages | None = None
    ) -> GenerationResult:
        return await self._batcher.generate(await self.validate(request, messages))

    async def stream(
        self, request: GenerationRequest, messages: Messages | None = None
    ) -> AsyncIterator[StreamDelta | GenerationResult]:
        request = await self.validate(request, messages)
        async with contextlib.aclosing(self._batcher.stream(request)) as events:
            async for event in events:
                yield event

    async def validate(
        self, request: GenerationRequest, messages: Messages | None = None
    ) -> GenerationRequest:
        """The request validated on arrival (a bad one never fails the batch it would have
        joined), off the event loop when that can take milliseconds (a grammar to compile, a
        chat template, a long prompt to tokenize). A short plain prompt is tokenized inline:
        a thread hop costs more, and it waits for the GIL that the decoding thread holds.
        With an engine process every check is a round trip: never inline."""
        if (
            self._process is None
            and messages is None
            and request.params.guided is None
            and len(request.prompt) <= _INLINE_PROMPT_CHARS
        ):
            return self._prepare(request, None)
        return await asyncio.to_thread(self._prepare, request, messages)

    def _prepare(self, request: GenerationRequest, messages: Messages | None) -> GenerationRequest:
        if messages is not None:
            request = dataclasses.replace(request, prompt=self._engine.render_chat(messages))
        self._engine.validate(request)
        return request

    async def load_adapter(self, adapter: AdapterRef) -> None:
        # It waits for a decoding step boundary while a batch runs: off the event loop.
        await asyncio.to_thread(self._engine.load_adapter, adapter)

    async def unload_adapter(self, name: str) -> None:
        await asyncio.to_thread(self._engine.unload_adapter, name)

    async def loaded_adapters(self) -> list[str]:
        return self._engine.loaded_adapters()

    async def stats(self) -> dict[str, int]:
        if self._process is None:
            return self._engine.stats()
        return await asyncio.to_thread(self._process.stats)  # a round trip: off the loop

    def info(self) -> dict[str, Any]:
        return {
            "engine_pid": None if self._process is None else self._process.pid,
            "batches_run": self._batcher.batches_run,
            "sequences_run": self._batcher.sequences_run,
        }

    def check(self) -> None:
        """The batch loop and the engine process (if any) are alive."""
        self._batcher.check()
        if self._process is not None:
            self._process.check()

    def close(self) -> None:
        if self._process is not None:
            self._process.close()
