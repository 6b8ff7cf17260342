"""A badly behaved remote teacher (a real loopback HTTP stub): 429s, timeouts, garbage,
truncation, duplicates. Every failure is retried a bounded number of times, counted, and
recorded; a run that cannot reach its target stops and says why."""

from __future__ import annotations

import asyncio

import pytest

from llmvm_ray.config import load_config
from llmvm_ray.synthesis.dedup import Deduper
from llmvm_ray.synthesis.records import Seed
from llmvm_ray.synthesis.run import drive, local_executor
from llmvm_ray.synthesis.synthesizer import Synthesizer, TaskInput
from llmvm_ray.teachers import build_teacher
from tests.support.stub_teacher import StubTeacher

SEEDS = tuple(
    Seed(f"s{i}", f"Question seed {i}: what is {i} plus one?", f" {i + 1}") for i in range(5)
)
TASK = TaskInput(task="add", context="Add one to the number.", seeds=SEEDS)


def make_config(tmp_path, stub: StubTeacher, api: str = "completions", **synthesis):
    base = {
        "seed_batch_size": 2,
        "seed_examples": 2,
        "examples_to_generate": 2,
        "request_retries": 3,
        "backoff_s": 0.01,
        "backoff_max_s": 0.02,
        "request_timeout_s": 5.0,
        "max_in_flight": 1,
        "embedding_model": None,
        "encoding": "json",
    }
    return load_config(
        overrides={
            "storage_path": str(tmp_path),
            "teacher": {"base_url": stub.url, "model": "stub", "api": api},
            "synthesis": {**base, **synthesis},
        }
    )


def run(config, target=None):
    s = config.synthesis
    synth = Synthesizer.for_config(config, build_teacher(config, synthesis=True), run_id="run-test")
    result = asyncio.run(
        drive(
            [TASK],
            s.examples_to_generate if target is None else target,
            synth,
            local_executor(synth),
            lambda: Deduper(s),
        )
    )
    return result, result.tasks["add"], synth


def test_retries_through_429_timeout_and_garbage(tmp_path):
    with StubTeacher(["429", "slow", "garbage", "good"], slow_s=1.5) as stub:
        config = make_config(tmp_path, stub, request_timeout_s=0.5)
        result, task, _ = run(config)
    stats = task.stats
    assert task.outcome().reached and len(task.kept) == 2
    assert stats.requests == 1 and stats.attempts == 4 and stats.retries == 3
    assert stats.errors == {"rate_limited": 1, "timeout": 1, "no_valid_records": 1}
    kinds = [e["kind"] for e in task.errors]
    assert kinds == ["rate_limited", "timeout", "unparseable", "no_valid_records"]
    assert all(row["attempt"] == 3 for row in task.kept)
    assert len(stub.requests) == 4  # the SDK's own retries are off: every try is counted


def test_garbage_teacher_stops_within_its_budget_and_says_why(tmp_path):
    with StubTeacher(["garbage"]) as stub:
        config = make_config(tmp_path, stub, request_retries=1, attempt_budget=2.0)
        result, task, _ = run(config, target=4)
    outcome = task.outcome()
    assert not outcome.reached and not result.report()["reached"]
    # budget: ceil(4 / 2) x 2 = 4 requests, each tried twice
    assert len(stub.requests) == 8
    assert task.stats.failed_requests == 4 and task.stats.kept == 0
    assert "attempt budget spent: 4 of 4 requests made, 0 of 4 kept" in outcome.stop_reason
    assert "no_valid_records 8" in outcome.stop_reason
    assert sum(e["kind"] == "failed" for e in task.errors) == 4


def test_duplicates_from_the_teacher_are_counted_and_reported(tmp_path):
    with StubTeacher(["same"]) as stub:
        config = make_config(tmp_path, stub, attempt_budget=2.0)
        _, task, _ = run(config, target=4)
    s = task.stats
    assert (s.parsed, s.valid, s.unique, s.kept) == (8, 8, 2, 2)
    assert s.dropped["duplicate_exact"] == 6
    assert "lost to duplicate_exact 6" in task.outcome().stop_reason


def test_messy_but_readable_outputs_feed_the_funnel(tmp_path):
    with StubTeacher(["truncated", "fenced", "delimited", "good"]) as stub:
        config = make_config(tmp_path, stub)
        _, task, _ = run(config, target=6)
    s = task.stats
    # truncated: 1 of 2 readable; fenced, delimited, good: 2 each
    assert (s.generated, s.parsed, s.valid, s.unique, s.kept) == (8, 7, 7, 7, 6)
    assert s.dropped["unparseable"] == 1 and s.dropped["over_target"] == 1
    assert s.requested == 8 and s.requests == 4 and s.retries == 0


def test_in_flight_limit_holds_with_concurrent_requests(tmp_path):
    with StubTeacher(["slow"], slow_s=0.3) as stub:
        config = make_config(tmp_path, stub, max_in_flight=2, requests_per_s=100.0)
        _, task, synth = run(config, target=12)
    assert len(task.kept) == 12
    assert stub.peak_in_flight == 2 and synth.limiter.peak_in_flight == 2


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_template_family_follows_the_teacher_api(tmp_path, api):
    with StubTeacher(["good"]) as stub:
        config = make_config(tmp_path, stub, api=api)
        _, task, _ = run(config)
    body = stub.requests[0]
    family = "chat" if api == "chat" else "completion"
    assert {row["template"].split("/")[0] for row in task.kept} == {family}
    if api == "chat":
        assert [m["role"] for m in body["messages"]] == ["system", "user"]
        assert "Add one to the number." in body["messages"][1]["content"]
    else:
        assert "Add one to the number." in body["prompt"]
    shown = [s for s in SEEDS if s.prompt in str(body)]
    assert sorted(s.id for s in shown) == sorted(task.kept[0]["seed_ids"])


def test_answer_with_teacher_replaces_completions_with_the_teachers_answers(tmp_path):
    with StubTeacher(["good", "good", "500"]) as stub:
        config = make_config(tmp_path, stub, answer_with_teacher=True, request_retries=0)
        _, task, _ = run(config, target=1)
        answers = {b["prompt"]: i for i, b in enumerate(stub.requests[1:], start=1)}
        expected_good = stub.text("good", 1)[0]
    s = task.stats
    # request 0 wrote two examples; answering them took requests 1 (good) and 2 (a 500)
    assert len(stub.requests) == 3 and s.requests == 1
    assert s.valid == 1 and s.dropped["answer_failed: http_500"] == 1
    [row] = task.kept
    assert row["completion_by"] == "teacher"
    assert answers[TASK.context + row["prompt"]] in (1, 2)
    assert row["completion"] == expected_good  # the answer, not the generated completion
