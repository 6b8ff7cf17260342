"""Streaming deltas: they concatenate to the final text and never leak trimmed text."""

from __future__ import annotations

from llmvm_ray.engine import Engine, GuidedSpec, StreamDelta
from tests.engine.helpers import joined_deltas, long_sample, req, texts


def stream(engine: Engine, requests: list, **kwargs) -> tuple[list, list[StreamDelta]]:
    deltas: list[StreamDelta] = []
    results = engine.generate(requests, on_delta=deltas.append, **kwargs)
    return results, deltas


def test_deltas_concatenate_to_every_choice(engine: Engine) -> None:
    seed, full = long_sample(engine, max_tokens=30)
    stop = full[10:12]
    requests = [
        req("plain", seed=1, max_tokens=20),
        req("n2", "Input: 3 1 2\nOutput:", seed=2, max_tokens=14, n=2),
        req("stopped", seed=seed, max_tokens=30, stop=(stop,)),
        req("greedy", temperature=0, max_tokens=5),
        req("choice", max_tokens=10, seed=4, guided=GuidedSpec(choices=("yes", "no"))),
    ]
    results, deltas = stream(engine, requests)
    joined = joined_deltas(deltas)
    for result in results:
        for choice in result.choices:
            key = (result.request_id, choice.index)
            assert joined[key] == choice.text
            own = [d for d in deltas if (d.request_id, d.index) == key]
            assert own[-1].finish_reason == choice.finish_reason  # the last delta finishes
            assert all(d.finish_reason is None for d in own[:-1])
    stopped = next(r for r in results if r.request_id == "stopped").choices[0]
    assert stopped.finish_reason == "stop"
    assert stop not in joined[("stopped", 0)]
    assert joined[("stopped", 0)] == full[: full.index(stop)]


def test_streaming_does_not_change_the_text(engine: Engine) -> None:
    requests = [req("a", seed=8, max_tokens=25), req("b", seed=9, max_tokens=12, n=2)]
    streamed, _ = stream(engine, requests)
    assert texts(streamed) == texts(engine.generate(requests))


def test_stream_is_incremental(engine: Engine) -> None:
    _, deltas = stream(engine, [req("a", seed=8, max_tokens=25)])
    assert len([d for d in deltas if d.text]) > 5  # text arrives step by step, not at the end


def test_failing_consumer_aborts_only_its_request(engine: Engine) -> None:
    seen: list[StreamDelta] = []

    def on_delta(delta: StreamDelta) -> None:
        if delta.request_id == "broken":
            raise ConnectionError("client went away")
        seen.append(delta)

    results = engine.generate(
        [req("broken", seed=1, max_tokens=30), req("fine", temperature=0, max_tokens=30)],
        on_delta=on_delta,
    )
    broken, fine = results
    assert broken.choices[0].completion_tokens < 30
    assert fine.choices[0].completion_tokens == 30
    assert joined_deltas(seen) == {("fine", 0): fine.choices[0].text}


def test_abort_sends_a_final_delta(engine: Engine) -> None:
    results, deltas = stream(
        engine, [req("gone", seed=1, max_tokens=30)], should_abort=lambda rid: True
    )
    assert deltas[-1].finish_reason == "stop"
    assert joined_deltas(deltas)[("gone", 0)] == results[0].choices[0].text


def test_a_finished_request_is_reported_before_the_batch_ends(engine: Engine) -> None:
    events: list[tuple[str, str, object]] = []
    seed, _ = long_sample(engine, max_tokens=30)  # a row that runs all 30 steps
    batch = [req("short", temperature=0, max_tokens=2), req("long", seed=seed, max_tokens=30)]
    results = engine.generate(
        batch,
        on_delta=lambda d: events.append(("delta", d.request_id, d.finish_reason)),
        on_result=lambda r: events.append(("result", r.request_id, r)),
    )
    reported = [e for e in events if e[0] == "result"]
    assert [e[1] for e in reported] == ["short", "long"]  # each once, the short one first
    assert [e[2] for e in reported] == results
    short_result = events.index(reported[0])
    long_final = max(i for i, e in enumerate(events) if e[:2] == ("delta", "long"))
    assert short_result < long_final, "the short result waited for the long row"
    last_short_delta = max(i for i, e in enumerate(events) if e[:2] == ("delta", "short"))
    assert last_short_delta < short_result  # its deltas all came first


def test_results_are_reported_without_streaming(engine: Engine) -> None:
    seen = []
    batch = [req("a", temperature=0, max_tokens=3, n=2), req("b", seed=2, max_tokens=9)]
    results = engine.generate(batch, on_result=seen.append)
    assert sorted(r.request_id for r in seen) == ["a", "b"]
    assert {r.request_id: r for r in seen} == {r.request_id: r for r in results}
