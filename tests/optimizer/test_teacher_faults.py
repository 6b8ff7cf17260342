"""A remote teacher that fails or answers malformed, seen from ``/v1/complete``: a typed
5xx naming the teacher (502 malformed, 503 with ``Retry-After`` when overloaded, 504 when
slow), and nothing recorded for the task."""

from __future__ import annotations

import httpx
import pytest

from llmvm_ray.config import load_config
from llmvm_ray.serve.deploy import ServiceRunner
from tests.support.stub_teacher import StubTeacher

pytestmark = pytest.mark.ray

SCRIPT = ["null_text", "no_choices", "bad_finish", "bad_usage", "500", "503", "slow", "good"]


@pytest.fixture(scope="module")
def faulty(ray_session, serve_port, tmp_path_factory, tiny_llama):
    root = tmp_path_factory.mktemp("teacher-faults")
    with StubTeacher(SCRIPT, slow_s=5.0) as stub:
        config = load_config(
            overrides={
                "storage_path": str(root),
                "registry": {"actor_name": "faults-registry"},
                "serve": {"port": serve_port, "app_name": "faults", "route_prefix": "/faults"},
                "teacher": {
                    "base_url": stub.url,
                    "model": "stub",
                    "max_retries": 0,
                    "timeout_s": 2,
                },
                "optimizer": {"student_model": "student", "flush_interval_s": 0.2},
                "models": [{"name": "student", "model_uri": str(tiny_llama), "num_cpus": 0.25}],
            }
        )
        runner = ServiceRunner(config, shutdown_ray=False).start()
        try:
            yield runner.url, stub
        finally:
            runner.stop()


def test_every_fault_is_a_typed_5xx_and_nothing_is_recorded(faulty):
    url, _ = faulty
    http = httpx.Client(base_url=url, timeout=60)
    body = {"prompt": "What is 1 plus one?", "context": "Add one.\n", "finetune": True}
    seen = []
    for expected in (502, 502, 502, 502, 502, 503, 504):
        r = http.post("/v1/complete", json=body)
        error = r.json()["error"]
        seen.append((r.status_code, error["type"], r.headers.get("retry-after")))
        assert r.status_code == expected, r.text
        assert "teacher 'stub'" in error["message"], error
    assert seen[5] == (503, "teacher_unavailable", "7")
    assert seen[6][:2] == (504, "teacher_timeout")
    tasks = http.get("/v1/tasks").json()["data"]
    assert len(tasks) == 1 and tasks[0]["examples"]["recorded"] == 0, tasks
    # The teacher recovers: its good answer is served and recorded.
    ok = http.post("/v1/complete", json=body)
    assert ok.status_code == 200 and ok.json()["llmvm"]["served_by"] == "teacher", ok.text
    task = http.get(f"/v1/tasks/{ok.json()['llmvm']['task_id']}").json()
    assert task["examples"]["recorded"] == 1
