"""The replica's micro-batcher: batch formation, adaptive waiting, failures, aborts.

The batcher's engine call is a plain function here (it records the batches it is given): what
is under test is the scheduling, which needs no model. The engine behind it is tested in
tests/engine and through Serve in tests/serve/test_openai_api.py.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from llmvm_ray.engine.types import Choice, GenerationRequest, GenerationResult, SamplingParams
from llmvm_ray.serve.batching import Batcher


class Recorder:
    """An engine call that answers every row with its prompt and remembers batch sizes."""

    def __init__(self, delay_s: float = 0.0, fail: bool = False) -> None:
        self.batches: list[list[str]] = []
        self.delay_s = delay_s
        self.fail = fail
        self._lock = threading.Lock()

    def __call__(self, requests, on_delta, should_abort, on_result) -> list[GenerationResult]:
        with self._lock:
            self.batches.append([r.request_id for r in requests])
        if self.fail:
            raise RuntimeError("engine exploded")
        results = [answer(r) for r in requests]
        for r, result in zip(requests, results, strict=True):
            if r.params.max_tokens == 1:  # "short" requests finish at once, before the rest
                on_result(result)
        threading.Event().wait(self.delay_s)
        return results


def answer(r: GenerationRequest) -> GenerationResult:
    return GenerationResult(
        request_id=r.request_id,
        choices=tuple(
            Choice(index=i, text=r.prompt, finish_reason="stop", completion_tokens=1)
            for i in range(r.params.n)
        ),
        prompt_tokens=1,
        seed=0,
    )


def request(i: int, n: int = 1) -> GenerationRequest:
    return GenerationRequest(f"r{i}", f"prompt {i}", SamplingParams(max_tokens=4, n=n))


def test_a_lone_client_never_waits_for_company() -> None:
    engine = Recorder()
    batcher = Batcher(engine, max_batch_size=16, wait_s=30.0)

    async def main() -> None:
        for i in range(3):  # sequential: each would wait 30 s if the wait were fixed
            result = await asyncio.wait_for(batcher.generate(request(i)), timeout=10)
            assert result.choices[0].text == f"prompt {i}"

    asyncio.run(main())
    assert engine.batches == [["r0"], ["r1"], ["r2"]]


def test_a_steady_crowd_fills_whole_batches() -> None:
    """Closed-loop clients: after a warm-up the batcher waits for the returning ones."""
    engine = Recorder(delay_s=0.02)
    batcher = Batcher(engine, max_batch_size=8, wait_s=2.0)

    async def client(c: int) -> None:
        for k in range(6):
            await asyncio.sleep(0.001 * c)  # clients come back staggered, as through a proxy
            await batcher.generate(request(c * 100 + k))

    async def main() -> None:
        await asyncio.gather(*(client(c) for c in range(8)))

    asyncio.run(main())
    sizes = [len(b) for b in engine.batches]
    assert sum(sizes) == 48
    # The first request finds no history and runs alone; from then on the crowd is known and
    # every batch is full (the last one is short by that first client's head start).
    assert all(size == 8 for size in sizes[1:-1]), sizes
    assert len(sizes) <= 7, sizes


def test_batches_respect_max_batch_size_counting_n() -> None:
    engine = Recorder(delay_s=0.05)
    batcher = Batcher(engine, max_batch_size=4, wait_s=0.01)

    async def main() -> None:
        await asyncio.gather(*(batcher.generate(request(i, n=3)) for i in range(4)))

    asyncio.run(main())
    assert all(len(b) == 1 for b in engine.batches)  # 3 + 3 rows would exceed 4


def test_an_engine_failure_fails_only_its_batch() -> None:
    engine = Recorder(fail=True)
    batcher = Batcher(engine, max_batch_size=4, wait_s=0.0)

    async def main() -> None:
        with pytest.raises(RuntimeError, match="exploded"):
            await batcher.generate(request(0))
        engine.fail = False
        assert (await batcher.generate(request(1))).choices[0].text == "prompt 1"
        batcher.check()  # the loop survived

    asyncio.run(main())


def test_abandoned_requests_are_not_run() -> None:
    engine = Recorder(delay_s=0.2)
    batcher = Batcher(engine, max_batch_size=1, wait_s=0.0)

    async def main() -> None:
        first = asyncio.create_task(batcher.generate(request(0)))
        await asyncio.sleep(0.05)  # r0 is running; r1 will wait behind it
        second = asyncio.create_task(batcher.generate(request(1)))
        await asyncio.sleep(0.01)
        second.cancel()
        await first
        await asyncio.sleep(0.3)

    asyncio.run(main())
    assert engine.batches == [["r0"]]


def test_a_finished_request_leaves_before_its_batch_ends() -> None:
    """A short answer is handed back as soon as the engine reports it, while the batch's
    longer rows still decode (no head-of-line blocking)."""
    engine = Recorder(delay_s=1.0)
    batcher = Batcher(engine, max_batch_size=4, wait_s=0.05)
    short = GenerationRequest("short", "s", SamplingParams(max_tokens=1))

    async def main() -> tuple[float, float]:
        started = time.monotonic()
        long_task = asyncio.create_task(batcher.generate(request(1)))
        assert (await batcher.generate(short)).request_id == "short"
        short_s = time.monotonic() - started
        assert (await long_task).request_id == "r1"
        return short_s, time.monotonic() - started

    short_s, long_s = asyncio.run(main())
    assert sorted(engine.batches[0]) == ["r1", "short"] and len(engine.batches) == 1
    assert short_s < 0.5 < long_s
