"""Continuous batching: requests joining a running ``generate`` through its inbox."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from llmvm_ray.engine import AdapterRef, Engine, GenerationRequest, GenerationResult
from llmvm_ray.engine.inbox import RequestInbox
from llmvm_ray.errors import InvalidRequestError
from tests.engine.helpers import JoinRun, long_sample, model_config, req, texts


def alone(engine: Engine, request: GenerationRequest) -> list[str]:
    return texts(engine.generate([request]))[request.request_id]


@pytest.mark.parametrize("which", ["engine", "gpt2_engine"])
def test_joiners_get_the_text_they_get_alone(which: str, request: pytest.FixtureRequest) -> None:
    engine: Engine = request.getfixturevalue(which)
    seed, _ = long_sample(engine, max_tokens=30, min_chars=20)  # runs all 30 steps
    first = req("first", seed=seed, max_tokens=30)
    joiners = {
        1: [req("longer-prompt", "A much longer prompt than the first one, " * 3, seed=5)],
        2: [
            req("short-prompt", "x", seed=7, max_tokens=20, n=2, top_p=0.9),
            req("greedy", "Hello world", temperature=0, max_tokens=12, stop=("e",)),
        ],
        4: [req("late", "Late again", seed=11, max_tokens=25)],
    }
    expected = {r.request_id: alone(engine, r) for v in joiners.values() for r in v}
    expected["first"] = alone(engine, first)
    run = JoinRun(engine, [first], joiners).run()
    assert run.joined_mid_run == 4
    assert {k: [c.text for c in r.choices] for k, r in run.results.items()} == expected
    assert [r.request_id for r in run.returned] == ["first"]  # joiners come back by callback
    assert not run.rejected


def test_joiners_beyond_max_rows_wait_for_free_rows(engine: Engine) -> None:
    first = [req(f"r{i}", f"prompt {i}", seed=i, max_tokens=10) for i in range(2)]
    later = [req(f"j{i}", f"joiner {i}", seed=10 + i, max_tokens=6, n=1 + i % 2) for i in range(4)]
    run = JoinRun(engine, first, {1: later}, max_rows=2).run()
    assert set(run.results) == {r.request_id for r in first + later}
    for r in first + later:
        assert [c.text for c in run.results[r.request_id].choices] == alone(engine, r)


def test_an_invalid_joiner_is_rejected_alone(engine: Engine) -> None:
    first = req("first", seed=1, max_tokens=12)
    bad = req("bad", max_tokens=10**6)
    good = req("good", seed=2, max_tokens=5)
    twin = req("first", seed=3, max_tokens=5)  # same id as a running request
    run = JoinRun(engine, [first], {1: [bad, good, twin]}).run()
    assert set(run.results) == {"first", "good"}
    assert isinstance(run.rejected["bad"], InvalidRequestError)
    assert run.rejected["bad"].param == "max_tokens"
    assert "already in this batch" in str(run.rejected["first"])


def test_an_empty_closed_inbox_ends_at_once(engine: Engine) -> None:
    inbox = RequestInbox(4, lambda request_id, error: None)
    inbox.close()
    assert engine.generate([], inbox=inbox) == []


def _in_thread(call: Callable[[], object]) -> threading.Thread:
    thread = threading.Thread(target=call)
    thread.start()
    return thread


def test_adapter_loading_is_not_locked_out_by_a_long_run(
    tiny_llama: Path, lora_adapters: dict[str, Path]
) -> None:
    engine = Engine(model_config(tiny_llama, max_adapters_per_replica=1))
    alpha = AdapterRef("alpha", str(lora_adapters["alpha"]))
    beta = AdapterRef("beta", str(lora_adapters["beta"]))
    with_alpha = req("a", seed=4, max_tokens=40, adapter=alpha)
    expected = alone(engine, with_alpha)
    engine.unload_adapter("alpha")
    inbox = RequestInbox(8, lambda request_id, error: None)
    results: list[GenerationResult] = []
    started = threading.Event()

    def on_delta(delta) -> None:
        started.set()

    runner = _in_thread(
        lambda: results.extend(engine.generate([with_alpha], on_delta, inbox=inbox))
    )
    assert started.wait(30)
    # The run holds the engine (its inbox is open) and its row uses alpha, the only slot:
    # loading beta must wait until that row is done, not until the run ends.
    loader = _in_thread(lambda: engine.load_adapter(beta))
    loader.join(30)
    assert not loader.is_alive(), "load_adapter waited for the whole run"
    assert runner.is_alive()  # the run itself is still open
    assert engine.loaded_adapters() == ["beta"]
    inbox.close()
    runner.join(30)
    assert [c.text for c in results[0].choices] == expected  # alpha was kept while in use


def _policy_engine(tiny_llama: Path, **policy: float) -> Engine:
    return Engine(model_config(tiny_llama, **policy))


def test_arrivals_gather_before_joining(tiny_llama: Path) -> None:
    """Each join is a prefill forward of its own: arrivals wait until their rows reach
    ``join_ratio`` of the running rows (here 2 of 4), then join together."""
    engine = _policy_engine(tiny_llama, join_ratio=0.5, join_wait_steps=10_000)
    first = [req(f"r{i}", f"prompt {i}", temperature=0, max_tokens=60) for i in range(4)]
    joiners = {1: [req("j1", seed=1, max_tokens=5)], 3: [req("j2", seed=2, max_tokens=5)]}
    before = engine.stats()
    run = JoinRun(engine, first, joiners).run()
    assert run.joined_mid_run == 2 and set(run.results) == {"r0", "r1", "r2", "r3", "j1", "j2"}
    after = engine.stats()
    assert after["prefills"] - before["prefills"] == 2  # the first batch, then both joiners
    assert after["prefill_rows"] - before["prefill_rows"] == 6


def test_a_lone_arrival_waits_at_most_join_wait_steps(tiny_llama: Path) -> None:
    engine = _policy_engine(tiny_llama, join_ratio=100.0, join_wait_steps=2)
    first = [req("long", temperature=0, max_tokens=80)]
    run = JoinRun(engine, first, {1: [req("short", seed=3, max_tokens=3)]}).run()
    order = list(run.results)
    assert order == ["short", "long"]  # joined within a few steps, not after the long row
    assert engine.stats()["prefills"] == 2


def test_stats_count_steps_and_rows(tiny_llama: Path) -> None:
    engine = _policy_engine(tiny_llama)
    engine.generate([req("a", temperature=0, max_tokens=6), req("b", temperature=0, max_tokens=3)])
    stats = engine.stats()
    assert stats["prefills"] == 1 and stats["prefill_rows"] == 2
    # The prefill chooses each row's first token; then b needs 2 more steps, a 5.
    assert stats["steps"] == 5 and stats["row_steps"] == 2 + 2 + 1 + 1 + 1


def test_only_streaming_requests_make_deltas(engine: Engine) -> None:
    deltas = []
    loud = req("loud", seed=1, max_tokens=8)
    quiet = dataclasses.replace(loud, request_id="quiet", stream=False)
    results = engine.generate([quiet, loud], on_delta=deltas.append)
    assert {d.request_id for d in deltas} == {"loud"}
    assert texts(results)["quiet"] == texts(results)["loud"]  # same seed, same text


@pytest.fixture(scope="module")
def sliding_window_model(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Mistral with an 8-token sliding window: its KV cache keeps only the
    window, so rows cannot be padded onto a running batch."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, MistralConfig, MistralForCausalLM

    base = AutoConfig.from_pretrained(tiny_llama)
    config = MistralConfig(
        **{
            k: getattr(base, k)
            for k in (
                "vocab_size",
                "hidden_size",
                "intermediate_size",
                "num_hidden_layers",
                "num_attention_heads",
                "num_key_value_heads",
                "max_position_embeddings",
                "bos_token_id",
                "eos_token_id",
                "pad_token_id",
            )
        },
        sliding_window=8,
    )
    out = tmp_path_factory.mktemp("tiny-mistral")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        MistralForCausalLM(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_llama).save_pretrained(out)
    return out


def test_a_sliding_window_model_runs_joiners_after_the_batch(sliding_window_model: Path) -> None:
    engine = Engine(model_config(sliding_window_model))
    first = req("first", "A prompt longer than the window of eight tokens", seed=1, max_tokens=30)
    joiner = req("joiner", seed=2, max_tokens=12)
    expected = {r.request_id: alone(engine, r) for r in (first, joiner)}
    before = engine.stats()["prefills"]
    run = JoinRun(engine, [first], {1: [joiner]}).run()
    assert {k: [c.text for c in r.choices] for k, r in run.results.items()} == expected
    assert list(run.results) == ["first", "joiner"]  # it waited for the batch to drain
    assert engine.stats()["prefills"] == before + 2
