"""The replica's batcher: batch formation, adaptive waiting, failures, aborts, joining.

Batch formation (``continuous=False``) is tested with a plain function as the engine call (it
records the batches it is given): that scheduling needs no model. Continuous batching is
tested with a real ``Engine`` on a tiny model, since what matters there is that requests
really join a decoding batch and still get their own texts.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from llmvm_ray.engine import build_engine
from llmvm_ray.engine.batching import Batcher
from llmvm_ray.engine.types import Choice, GenerationRequest, GenerationResult, SamplingParams
from tests.engine.helpers import model_config, serve_through


class Recorder:
    """An engine call that answers every row with its prompt and remembers batch sizes."""

    def __init__(self, delay_s: float = 0.0, fail: bool = False) -> None:
        self.batches: list[list[str]] = []
        self.delay_s = delay_s
        self.fail = fail
        self._lock = threading.Lock()

    def __call__(
        self, requests, on_delta, should_abort, on_result, inbox=None
    ) -> list[GenerationResult]:
        assert inbox is None  # these tests are about forming batches
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
    batcher = Batcher(engine, max_batch_size=16, wait_s=30.0, continuous=False)

    async def main() -> None:
        for i in range(3):  # sequential: each would wait 30 s if the wait were fixed
            result = await asyncio.wait_for(batcher.generate(request(i)), timeout=10)
            assert result.choices[0].text == f"prompt {i}"

    asyncio.run(main())
    assert engine.batches == [["r0"], ["r1"], ["r2"]]


def test_a_steady_crowd_fills_whole_batches() -> None:
    """Closed-loop clients: after a warm-up the batcher waits for the returning ones."""
    engine = Recorder(delay_s=0.02)
    batcher = Batcher(engine, max_batch_size=8, wait_s=2.0, continuous=False)

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
    batcher = Batcher(engine, max_batch_size=4, wait_s=0.01, continuous=False)

    async def main() -> None:
        await asyncio.gather(*(batcher.generate(request(i, n=3)) for i in range(4)))

    asyncio.run(main())
    assert all(len(b) == 1 for b in engine.batches)  # 3 + 3 rows would exceed 4


def test_an_engine_failure_fails_only_its_batch() -> None:
    engine = Recorder(fail=True)
    batcher = Batcher(engine, max_batch_size=4, wait_s=0.0, continuous=False)

    async def main() -> None:
        with pytest.raises(RuntimeError, match="exploded"):
            await batcher.generate(request(0))
        engine.fail = False
        assert (await batcher.generate(request(1))).choices[0].text == "prompt 1"
        batcher.check()  # the loop survived

    asyncio.run(main())


def test_abandoned_requests_are_not_run() -> None:
    engine = Recorder(delay_s=0.2)
    batcher = Batcher(engine, max_batch_size=1, wait_s=0.0, continuous=False)

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
    batcher = Batcher(engine, max_batch_size=4, wait_s=0.05, continuous=False)
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


# --- continuous batching, with a real engine ---------------------------------------------


def sampled(i: int, **params) -> GenerationRequest:
    params = {"max_tokens": 6 + i % 5 * 4, "seed": i, **params}
    return GenerationRequest(f"c{i}", f"client prompt {i} " * (1 + i % 3), SamplingParams(**params))


def test_closed_loop_clients_join_the_running_batch(engine) -> None:
    batcher = Batcher(engine.generate, max_batch_size=4, wait_s=0.01)
    requests = [sampled(i) for i in range(24)]
    alone = {r.request_id: engine.generate([r])[0].choices[0].text for r in requests}

    async def client(c: int) -> list[GenerationResult]:
        return [await batcher.generate(r) for r in requests[c::4]]

    async def main() -> list[GenerationResult]:
        return [r for rs in await asyncio.gather(*(client(c) for c in range(4))) for r in rs]

    results = asyncio.run(main())
    assert {r.request_id: r.choices[0].text for r in results} == alone
    # Each client's next request joined the decoding batch instead of waiting for it to end:
    # far fewer engine calls than rounds of requests (6 rounds of 4 clients).
    assert batcher.batches_run <= 2, batcher.batches_run
    assert batcher.sequences_run == 24


def test_joiners_stream_and_a_bad_joiner_fails_alone(engine) -> None:
    batcher = Batcher(engine.generate, max_batch_size=8, wait_s=0.0)
    long = sampled(1, max_tokens=200, temperature=0)  # greedy: no early EOS on this model

    async def main() -> tuple[str, str, Exception]:
        running = asyncio.create_task(batcher.generate(long))
        await asyncio.sleep(0.02)  # the long request is decoding
        streamed = ""
        async for event in batcher.stream(sampled(2)):
            if not isinstance(event, GenerationResult):
                streamed += event.text
            else:
                final = event.choices[0].text
        assert not running.done()
        with pytest.raises(Exception) as bad:  # never validated before it joined
            await batcher.generate(sampled(3, max_tokens=10**6))
        await running
        return streamed, final, bad.value

    streamed, final, error = asyncio.run(main())
    assert streamed == final == engine.generate([sampled(2)])[0].choices[0].text
    assert getattr(error, "param", None) == "max_tokens"
    assert batcher.batches_run == 1


def test_an_engine_failure_fails_the_running_batch_and_its_joiners() -> None:
    gate = threading.Event()

    def exploding(requests, on_delta, should_abort, on_result, inbox):
        gate.wait(5)  # joiners arrive meanwhile
        raise RuntimeError("engine exploded")

    batcher = Batcher(exploding, max_batch_size=4, wait_s=0.0)

    async def main() -> list[object]:
        first = asyncio.create_task(batcher.generate(request(0)))
        await asyncio.sleep(0.05)
        joiner = asyncio.create_task(batcher.generate(request(1)))
        await asyncio.sleep(0.05)
        gate.set()
        return await asyncio.gather(first, joiner, return_exceptions=True)

    outcomes = asyncio.run(main())
    assert [str(o) for o in outcomes] == ["engine exploded"] * 2
    batcher.check()


def test_the_in_process_engine_client(tiny_llama, engine) -> None:
    """What the replica holds: requests validated on arrival (the invalid one never ran) and
    batched; its info entries as the replica reports them."""
    client = build_engine(model_config(tiny_llama, engine_process="off"))
    assert client.max_model_len == engine.max_model_len
    assert serve_through(client, engine) == {
        "engine_pid": None,
        "batches_run": 2,
        "sequences_run": 2,
    }
    client.close()
