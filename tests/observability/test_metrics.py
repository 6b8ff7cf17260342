"""Metrics through Ray's metrics API, scraped from Ray's real metrics export port, and
``GET /v1/stats`` after a real optimizing flow (teacher answers → Ray Train fine-tune → gate →
promotion → student answers with shadow checks).

One application of its own (``application`` label ``obs-test``, its own registry), so every
exported value can be asserted exactly: one tiny model serves plain requests, its two LoRA
adapters (one slot: the second evicts the first), and is both teacher and student of the
optimizer (trained at a negligible learning rate, the student answers like the teacher, so
the gate passes).
"""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from llmvm_ray.observability.metrics import exported_name
from tests.observability.scrape import wait_for_metrics

pytestmark = pytest.mark.ray

APP = "obs-test"
REGISTRY = "obs-test-registry"
KEY = "sk-obs"
KEY_B = "sk-obs-b"
COST_PER_1K = 0.5
TEACHER_ANSWERS = 8  # 6 train rows + 2 held out: exactly one fine-tune


@pytest.fixture(scope="module")
def obs_app(ray_session, serve_port, tiny_llama, adapters, tmp_path_factory):
    from llmvm_ray.config import load_config
    from llmvm_ray.serve.deploy import ServiceRunner

    config = load_config(
        overrides={
            "storage_path": str(tmp_path_factory.mktemp("obs-storage")),
            "registry": {"actor_name": REGISTRY},
            "serve": {
                "port": serve_port,
                "app_name": APP,
                "route_prefix": f"/{APP}",
                "api_keys": [KEY, KEY_B],
            },
            "teacher": {"model": "tiny"},
            "optimizer": {
                "student_model": "tiny",
                "min_train_examples": 6,
                "holdout_fraction": 0.25,
                "min_holdout": 1,
                "gate_threshold": 0.5,
                "shadow_rate": 1.0,
                "min_shadow_samples": 50,
                "flush_rows": 1,
                "flush_interval_s": 0.2,
                "default_max_tokens": 8,
                "teacher_cost_per_1k_tokens": COST_PER_1K,
                "train_overrides": {"max_steps": 1, "batch_size": 2, "lr": 1e-8},
            },
            "train": {"resources_per_worker": {"CPU": 0.5}},
            "models": [
                {
                    "name": "tiny",
                    "model_uri": str(tiny_llama),
                    "adapters": {k: str(v) for k, v in adapters.items()},
                    "num_cpus": 0.5,
                    "max_adapters_per_replica": 1,
                }
            ],
        }
    )
    runner = ServiceRunner(config, shutdown_ray=False).start()
    yield runner.url
    runner.stop()


def _labels(**labels: str) -> dict[str, str]:
    return {"application": APP, **labels}


def test_serving_metrics_reach_prometheus(obs_app):
    """Requests by endpoint/model/status, latency and TTFT histograms, tokens in/out and
    adapter loads/evictions, as Prometheus scrapes them from Ray's export port."""
    client = openai.OpenAI(base_url=f"{obs_app}/v1", api_key=KEY, max_retries=0, timeout=60)
    completion_tokens = prompt_tokens = 0
    for model in ("tiny", "tiny", "tiny:a1", "tiny:a2"):  # a2 evicts a1 (one adapter slot)
        r = client.completions.create(model=model, prompt="hello", max_tokens=3, temperature=0)
        completion_tokens += r.usage.completion_tokens
        prompt_tokens += r.usage.prompt_tokens
    chunks = list(
        client.completions.create(
            model="tiny",
            prompt="stream me",
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    usage = chunks[-1].usage
    completion_tokens += usage.completion_tokens
    prompt_tokens += usage.prompt_tokens
    chat = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt="x", max_tokens=2)
    assert httpx.get(f"{obs_app}/metrics", timeout=30).status_code == 404  # see routes.py

    requests = exported_name("llmvm_requests")
    latency = exported_name("llmvm_request_latency_seconds")
    ttft = exported_name("llmvm_time_to_first_token_seconds")
    tokens = exported_name("llmvm_tokens")
    completions = "/v1/completions"

    def check(s):
        assert s.value(requests, **_labels(endpoint=completions, model="tiny", status="200")) == 5
        assert (
            s.value(
                requests, **_labels(endpoint="/v1/chat/completions", model="tiny", status="200")
            )
            == 1
        )
        assert (
            s.value(requests, **_labels(endpoint=completions, model="unknown", status="404")) == 1
        )
        # 2 plain + 1 stream on the base model, 2 through an adapter
        assert (
            s.value(
                f"{latency}_count", **_labels(endpoint=completions, model="tiny", served_by="base")
            )
            == 3
        )
        assert (
            s.value(
                f"{latency}_count",
                **_labels(endpoint=completions, model="tiny", served_by="adapter"),
            )
            == 2
        )
        assert s.value(f"{latency}_bucket", **_labels(endpoint=completions, le="+Inf")) == 5
        assert s.value(f"{latency}_sum", **_labels(endpoint=completions)) > 0
        assert s.value(f"{ttft}_count", **_labels(endpoint=completions, model="tiny")) == 1
        assert s.value(tokens, **_labels(kind="completion")) == (
            completion_tokens + chat.usage.completion_tokens
        )
        assert s.value(tokens, **_labels(kind="prompt")) == (
            prompt_tokens + chat.usage.prompt_tokens
        )
        model = {"model": "tiny"}
        assert s.value(exported_name("llmvm_adapter_loads"), **_labels(**model)) == 2
        assert (
            s.value(exported_name("llmvm_adapter_evictions"), **_labels(reason="lru", **model)) == 1
        )
        assert (
            s.value(exported_name("llmvm_adapter_load_seconds") + "_count", **_labels(**model)) == 2
        )
        assert s.value(exported_name("llmvm_adapters_loaded"), **_labels(**model)) == 1
        # Decoding counters, pushed at health checks: every request above was prefilled
        # and decoded at least one step (one row each; the stream had 4 tokens).
        steps = s.value(exported_name("llmvm_decode_steps"), **_labels(**model))
        rows = s.value(exported_name("llmvm_decode_rows"), **_labels(**model))
        prefills = s.value(exported_name("llmvm_prefills"), **_labels(**model))
        prefill_rows = s.value(exported_name("llmvm_prefill_rows"), **_labels(**model))
        assert 1 <= prefills <= prefill_rows and prefill_rows >= 6
        assert 1 <= steps <= rows

    wait_for_metrics(check, what="serving metrics")


def _wait(predicate, timeout_s=300, what="condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_optimizing_flow_stats_and_metrics(obs_app):
    """Teacher answers are recorded, a fine-tune runs and passes its gate, the student
    answers: ``/v1/stats`` and the exported metrics agree with what the responses said."""
    http = httpx.Client(base_url=obs_app, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)

    def complete(prompt: str, finetune: bool) -> dict:
        r = http.post(
            "/v1/complete",
            json={"prompt": prompt, "context": "", "finetune": finetune, "max_tokens": 6},
        )
        assert r.status_code == 200, r.text
        return r.json()["llmvm"]

    teacher = [complete(f"item {i}:", finetune=True) for i in range(TEACHER_ANSWERS)]
    assert {m["served_by"] for m in teacher} == {"teacher"}
    task_id = teacher[0]["task_id"]
    view = _wait(
        lambda: (t := http.get(f"/v1/tasks/{task_id}").json())["route"] == "student" and t,
        what="promotion",
    )
    assert view["gate"]["passed"] is True
    student = [complete(f"new item {i}:", finetune=False) for i in range(3)]
    assert {m["served_by"] for m in student} == {"student"}
    answers = teacher + student
    saved = sum(m["prompt_tokens"] + m["completion_tokens"] for m in student)

    stats = _wait(
        lambda: (s := http.get("/v1/stats").json())["requests"]["shadow"] == 3 and s,
        timeout_s=60,
        what="the shadow checks",
    )
    assert stats["optimizer_enabled"] is True
    assert stats["requests"] == {"total": 11, "teacher": 8, "student": 3, "shadow": 3}
    assert stats["share"] == {"teacher": 8 / 11, "student": 3 / 11}
    assert stats["tokens"]["prompt"] == sum(m["prompt_tokens"] for m in answers)
    assert stats["tokens"]["completion"] == sum(m["completion_tokens"] for m in answers)
    assert stats["teacher_calls_saved"] == 3
    assert stats["teacher_tokens_saved"] == saved
    assert stats["estimated_cost_saved"] == pytest.approx(saved / 1000 * COST_PER_1K)
    assert stats["tasks"]["total"] == 1
    assert stats["tasks"]["by_route"] == {"teacher": 0, "student": 1}
    assert stats["tasks"]["examples_recorded"] == TEACHER_ANSWERS + 3  # + shadow answers
    assert stats["fine_tunes"]["total"] == 1
    assert stats["fine_tunes"]["by_state"]["SUCCEEDED"] == 1
    assert set(stats["fine_tunes"]["by_state"]) == {
        "QUEUED",
        "RUNNING",
        "SUCCEEDED",
        "FAILED",
        "CANCELLED",
    }
    # Another tenant's summary holds none of this tenant's work; no key, no summary.
    other = httpx.get(
        f"{obs_app}/v1/stats", headers={"Authorization": f"Bearer {KEY_B}"}, timeout=30
    ).json()
    assert other["requests"]["total"] == 0 and other["tasks"]["total"] == 0
    assert other["fine_tunes"]["total"] == 0 and other["share"]["student"] is None
    assert httpx.get(f"{obs_app}/v1/stats", timeout=30).status_code == 401

    def check(s):
        answers_metric = exported_name("llmvm_optimizer_answers")
        assert s.value(answers_metric, **_labels(route="teacher")) == 8
        assert s.value(answers_metric, **_labels(route="student")) == 3
        assert s.value(exported_name("llmvm_teacher_calls_saved"), **_labels()) == 3
        assert s.value(exported_name("llmvm_teacher_tokens_saved"), **_labels()) == saved
        assert s.value(exported_name("llmvm_teacher_cost_saved"), **_labels()) == pytest.approx(
            saved / 1000 * COST_PER_1K
        )
        assert s.value(exported_name("llmvm_optimizer_shadow_checks"), **_labels()) == 3
        assert s.value(exported_name("llmvm_optimizer_gates"), **_labels(result="passed")) == 1
        recorded = exported_name("llmvm_optimizer_examples_recorded")
        assert s.value(recorded, **_labels(source="teacher")) == 8
        assert s.value(recorded, **_labels(source="shadow")) == 3
        tasks = exported_name("llmvm_optimizer_tasks")
        assert s.value(tasks, **_labels(route="student")) == 1
        assert s.value(tasks, **_labels(route="teacher")) == 0
        reg = {"registry": REGISTRY}
        transitions = exported_name("llmvm_finetune_transitions")
        for status in ("QUEUED", "RUNNING", "SUCCEEDED"):
            assert s.value(transitions, status=status, **reg) == 1
        assert s.value(exported_name("llmvm_finetunes"), status="SUCCEEDED", **reg) == 1
        assert s.value(exported_name("llmvm_finetunes"), status="RUNNING", **reg) == 0
        duration = exported_name("llmvm_finetune_duration_seconds")
        assert s.value(f"{duration}_count", status="SUCCEEDED", **reg) == 1
        assert s.value(f"{duration}_sum", status="SUCCEEDED", **reg) > 0
        assert s.value(exported_name("llmvm_finetune_queue_seconds") + "_count", **reg) == 1
        # the gate and the student answers loaded the new adapter into the replica
        assert s.value(exported_name("llmvm_adapter_loads"), **_labels(model="tiny")) >= 1

    wait_for_metrics(check, what="optimizer and fine-tune metrics")


def test_record_synthesis_from_a_worker(ray_session):
    """The helper the synthesis pipeline calls, from inside a Ray task as its workers will."""
    import ray

    from llmvm_ray.observability.metrics import record_synthesis

    origin = "obs-test-origin"

    @ray.remote(num_cpus=0)
    def batch() -> None:
        record_synthesis(
            10,
            6,
            generated=9,
            dropped={"duplicate": 2, "parse_error": 1},
            teacher_calls=12,
            duration_s=1.5,
            origin=origin,
        )
        record_synthesis(5, 5, origin=origin)  # no optional figures: zeros are left out

    ray.get(batch.remote())

    def check(s):
        tag = {"origin": origin}
        assert s.value(exported_name("llmvm_synthesis_requested"), **tag) == 15
        assert s.value(exported_name("llmvm_synthesis_kept"), **tag) == 11
        assert s.value(exported_name("llmvm_synthesis_generated"), **tag) == 9
        dropped = exported_name("llmvm_synthesis_dropped")
        assert s.value(dropped, reason="duplicate", **tag) == 2
        assert s.value(dropped, reason="parse_error", **tag) == 1
        assert s.value(exported_name("llmvm_synthesis_teacher_calls"), **tag) == 12
        seconds = exported_name("llmvm_synthesis_batch_seconds")
        assert s.value(f"{seconds}_count", **tag) == 1
        # 1.5 s lands in the (1, 5] bucket (Ray derives _sum from bucket midpoints)
        assert s.value(f"{seconds}_bucket", le="1.0", **tag) == 0
        assert s.value(f"{seconds}_bucket", le="5.0", **tag) == 1
        assert 1 <= s.value(f"{seconds}_sum", **tag) <= 5

    wait_for_metrics(check, what="synthesis metrics")
