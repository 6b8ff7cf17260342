"""``EngineProcess``: the Engine's interface served by a child process.

Each test compares against the in-process ``Engine`` on the same tiny model, so what is under
test is the process boundary: results, deltas, errors, aborts, adapters and the child's
lifecycle (start-up failure, death, shutdown).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmvm_ray.engine import AdapterRef, Engine, StreamDelta
from llmvm_ray.engine.batching import BatchedEngine
from llmvm_ray.engine.inbox import RequestInbox
from llmvm_ray.engine.process import EngineProcess, _Aborts
from llmvm_ray.errors import InvalidRequestError, ServiceUnavailableError
from tests.engine.helpers import (
    JoinRun,
    joined_deltas,
    long_sample,
    model_config,
    req,
    serve_through,
    texts,
)


@pytest.fixture(scope="module")
def process(tiny_llama: Path) -> Iterator[EngineProcess]:
    engine = EngineProcess(model_config(Path(tiny_llama), max_adapters_per_replica=2))
    yield engine
    engine.close()


def test_same_seeded_texts_as_in_process(process: EngineProcess, engine: Engine) -> None:
    batch = [
        req("a", seed=1, max_tokens=12),
        req("b", "Once upon", seed=2, max_tokens=8, n=2),
        req("c", temperature=0, max_tokens=10, stop=["e"]),
        req("d", seed=3, max_tokens=10, frequency_penalty=1.2, logit_bias=((5, 3.0),)),
    ]
    assert texts(process.generate(batch)) == texts(engine.generate(batch))
    assert process.max_model_len == engine.max_model_len
    assert (
        set(process.stats())
        == set(engine.stats())
        == {
            "steps",
            "row_steps",
            "prefills",
            "prefill_rows",
        }
    )
    assert process.count_tokens("Hello world") == engine.count_tokens("Hello world")
    messages = [{"role": "user", "content": "hi"}]
    assert process.render_chat(messages) == engine.render_chat(messages)


def test_the_engine_client_over_a_process(
    process: EngineProcess, engine: Engine, tiny_llama: Path
) -> None:
    """Every check a round trip, off the event loop: the same answers and errors."""
    client = BatchedEngine(process, model_config(Path(tiny_llama)))
    info = serve_through(client, engine)
    assert info == {"engine_pid": process.pid, "batches_run": 2, "sequences_run": 2}


def test_streamed_deltas_join_into_the_texts(process: EngineProcess) -> None:
    deltas: list[StreamDelta] = []
    results = process.generate([req("s", seed=3, max_tokens=16, n=2)], on_delta=deltas.append)
    joined = joined_deltas(deltas)
    assert joined == {("s", c.index): c.text for c in results[0].choices}
    assert {d.finish_reason for d in deltas if d.finish_reason} == {
        c.finish_reason for c in results[0].choices
    }


def test_errors_keep_their_type_and_field(process: EngineProcess) -> None:
    with pytest.raises(InvalidRequestError) as info:
        process.validate(req("bad", max_tokens=10_000))
    assert info.value.param == "max_tokens"
    with pytest.raises(InvalidRequestError) as info:
        process.generate([req("bad", temperature=-1)])
    assert info.value.param == "temperature"
    assert process.validate(req("ok")) > 0  # the child still serves


def test_abort_reaches_the_child_mid_batch(process: EngineProcess) -> None:
    started = threading.Event()

    def on_delta(delta: StreamDelta) -> None:
        started.set()

    results = process.generate(
        [req("long", seed=1, max_tokens=200), req("other", seed=2, max_tokens=20)],
        on_delta=on_delta,
        should_abort=lambda rid: rid == "long" and started.is_set(),
    )
    assert results[0].choices[0].finish_reason == "stop"
    assert results[0].choices[0].completion_tokens < 200
    assert results[1].choices[0].completion_tokens == 20


def test_validation_is_answered_while_a_batch_runs(process: EngineProcess) -> None:
    streaming = threading.Event()
    done = threading.Event()

    def run() -> None:
        process.generate([req("long", seed=1, max_tokens=200)], on_delta=lambda d: streaming.set())
        done.set()

    thread = threading.Thread(target=run)
    thread.start()
    assert streaming.wait(30)
    assert process.validate(req("quick")) > 0
    answered_first = not done.is_set()
    thread.join(60)
    assert answered_first, "validate waited for the running batch"


def test_adapters_load_on_demand_and_report_events(
    tiny_llama: Path, lora_adapters: dict[str, Path], engine: Engine
) -> None:
    events: list[tuple] = []
    process = EngineProcess(
        model_config(Path(tiny_llama), max_adapters_per_replica=2),
        on_adapter_event=lambda *args: events.append(args),
    )
    try:
        alpha = AdapterRef("alpha", str(lora_adapters["alpha"]))
        beta = AdapterRef("beta", str(lora_adapters["beta"]))
        batch = [
            req("x", adapter=alpha, temperature=0, max_tokens=8),
            req("y", adapter=beta, temperature=0, max_tokens=8),
            req("z", temperature=0, max_tokens=8),
        ]
        in_process = Engine(model_config(Path(tiny_llama), max_adapters_per_replica=2))
        assert texts(process.generate(batch)) == texts(in_process.generate(batch))
        assert sorted(process.loaded_adapters()) == ["alpha", "beta"]
        process.unload_adapter("alpha")
        assert process.loaded_adapters() == ["beta"]
        assert [e[0] for e in events].count("load") == 2
        with pytest.raises(InvalidRequestError) as info:
            process.validate(req("m", adapter=AdapterRef("ghost", "/nonexistent")))
        assert info.value.param == "model"
    finally:
        process.close()


def test_a_dead_child_fails_calls_and_the_health_check(tiny_llama: Path) -> None:
    process = EngineProcess(model_config(Path(tiny_llama)))
    try:
        process.check()
        os.kill(process.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                process.check()
            except ServiceUnavailableError:
                break
            time.sleep(0.05)
        with pytest.raises(ServiceUnavailableError):
            process.check()
        with pytest.raises(ServiceUnavailableError):
            process.generate([req("after")])
    finally:
        process.close()


def test_close_stops_the_child(tiny_llama: Path) -> None:
    process = EngineProcess(model_config(Path(tiny_llama)))
    process.close()
    assert process._proc.returncode == 0
    process.close()  # idempotent


def test_a_start_up_failure_raises_the_loaders_error(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        EngineProcess(model_config(tmp_path / "no-model-here"))


def test_early_results_cross_the_process_boundary(process: EngineProcess) -> None:
    seen: list[str] = []
    seed, _ = long_sample(process, max_tokens=40)  # a row that runs all 40 steps
    batch = [req("short", temperature=0, max_tokens=2), req("long", seed=seed, max_tokens=40)]
    results = process.generate(
        batch, on_delta=lambda d: None, on_result=lambda r: seen.append(r.request_id)
    )
    assert seen == ["short", "long"]
    assert [r.request_id for r in results] == ["short", "long"]


def test_joiners_cross_the_process_boundary(process: EngineProcess, engine: Engine) -> None:
    """A continuous batch's inbox is mirrored into the child: joiners decode in the running
    batch with the texts they get in-process, an invalid one is rejected by name."""
    seed, _ = long_sample(engine, max_tokens=30, min_chars=20)
    first = req("first", seed=seed, max_tokens=30)
    joiners = [req("j1", "Once upon", seed=2, max_tokens=8, n=2), req("j2", temperature=0)]
    bad = req("bad", max_tokens=10**6)
    run = JoinRun(process, [first], {1: joiners, 2: [bad]}).run()
    assert run.joined_mid_run == 3
    expected = texts(engine.generate([first, *joiners]))
    assert {k: [c.text for c in r.choices] for k, r in run.results.items()} == expected
    assert isinstance(run.rejected["bad"], InvalidRequestError)
    assert run.rejected["bad"].param == "max_tokens"


def test_finished_requests_are_not_polled_for_aborts(process: EngineProcess) -> None:
    """A continuous batch lasts as long as traffic does: the requests the parent polls for
    aborts must shrink as results come back, not grow with every request ever joined."""
    done: set[str] = set()
    polled_after: list[str] = []
    inbox = RequestInbox(8, lambda request_id, error: None)

    def should_abort(request_id: str) -> bool:
        if request_id in done:
            polled_after.append(request_id)
        return False

    def on_result(result) -> None:
        done.add(result.request_id)
        if done >= {"long", "s1", "s2"}:
            inbox.close()

    for i in (1, 2):
        inbox.put(req(f"s{i}", seed=i, max_tokens=2))
    long = req("long", temperature=0, max_tokens=200)  # greedy: no early EOS on this model
    process.generate([long], None, should_abort, on_result, inbox)
    assert done == {"long", "s1", "s2"}
    # At most one poll can race a result; before, every 20 ms until the batch ended.
    assert all(polled_after.count(r) <= 1 for r in ("s1", "s2")), polled_after


def test_the_child_keeps_aborts_only_for_running_requests() -> None:
    """An abort that crosses its request's result on the socket, or names a request the
    child never ran, is not kept: a continuous batch's abort record must not grow with
    every disconnect that raced a result."""
    aborts = _Aborts()
    aborts.start(1, ["a", "b"])
    aborts.abort("a")
    assert "a" in aborts and "b" not in aborts
    aborts.finish(1, "a")
    assert "a" not in aborts
    aborts.abort("a")  # crossed its result
    aborts.abort("never-here")
    assert len(aborts) == 0
    aborts.start(1, ["c"])  # a joiner of the same call
    aborts.start(2, ["d"])
    aborts.abort("b")
    aborts.abort("c")
    aborts.abort("d")
    assert len(aborts) == 3
    aborts.end(1)  # the call ended (or failed) with b and c unfinished
    assert "d" in aborts and len(aborts) == 1
