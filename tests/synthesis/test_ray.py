"""Synthesis with a real teacher: a tiny model trained on our synthesis prompts, served by
our own Serve app (OpenAI endpoint with guided JSON), driven by the batch job's worker
actors through ``jobs/synthesize.py`` and by the optimizer for ``data_synthesis: true``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest

from llmvm_ray.client import Client

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-synth"
APP = "synth"
TEACHER_STEPS = 30  # enough for the shape of an example; guided JSON does the rest

SYNTHESIS = {
    "seed_batch_size": 2,
    "seed_examples": 2,
    "examples_to_generate": 4,
    "max_tokens": 300,
    "max_prompt_chars": 48,
    "max_completion_chars": 16,
    "request_retries": 2,
    "backoff_s": 0.05,
    "request_timeout_s": 120.0,
    "max_in_flight": 4,
    "worker_num_cpus": 0.05,
    "minhash_threshold": None,
    "embedding_model": None,
}


def wait_for(predicate, timeout_s=300, poll_s=0.3, what="condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def synth_service(ray_session, serve_port, tmp_path_factory):
    from llmvm_ray.config import load_config
    from llmvm_ray.serve.deploy import ServiceRunner
    from tests.support.synth_teacher import make_synthesis_teacher

    root = tmp_path_factory.mktemp("synth")
    make_synthesis_teacher(root / "teacher", "date", steps=TEACHER_STEPS, batch_size=16)
    config = load_config(
        overrides={
            "storage_path": str(root / "storage"),
            "registry": {"actor_name": "synth-registry"},
            "serve": {
                "port": serve_port,
                "app_name": APP,
                "route_prefix": f"/{APP}",
                "api_keys": [KEY],
            },
            "teacher": {"model": "synth"},
            "optimizer": {
                "student_model": "synth",
                "min_train_examples": 1000,  # no fine-tune here: synthesis is under test
                "flush_interval_s": 0.3,
                "default_max_tokens": 12,
            },
            # the optimizer's synthesis answers each new prompt with the task's own call
            "synthesis": {**SYNTHESIS, "answer_with_teacher": True},
            "models": [{"name": "synth", "model_uri": str(root / "teacher"), "num_cpus": 0.5}],
        }
    )
    runner = ServiceRunner(config, shutdown_ray=False).start()
    headers = {"Authorization": f"Bearer {KEY}"}

    def ready():
        try:
            return httpx.get(f"{runner.url}/v1/models", headers=headers).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(ready, what="the synth app")
    yield runner.url, root
    runner.stop()


def date_seeds(path: Path, n: int = 8) -> Path:
    import random

    from llmvm_ray.dev.tasks import get_task
    from tests.support.synth_teacher import example

    task, rng = get_task("date"), random.Random(3)
    rows = [
        {"id": f"d{i}", "task": "date", "context": task.instruction, **example(task, rng)}
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_batch_job_with_worker_actors_and_a_hosted_teacher(synth_service, tmp_path):
    """jobs/synthesize.py as `ray job submit` runs it (RAY_ADDRESS set), two workers, our
    endpoint constraining the teacher to the JSON schema: every answer parses."""
    import ray

    url, _ = synth_service
    out = tmp_path / "out"
    seeds = date_seeds(tmp_path / "seeds.jsonl")
    settings = [f"{k}={json.dumps(v)}" for k, v in SYNTHESIS.items() if v is not None]
    settings += ["embedding_model=", "minhash_threshold=null", "encoding=guided_json"]
    cmd = [sys.executable, str(ROOT / "jobs/synthesize.py"), "--seeds", str(seeds)]
    cmd += ["--output", str(out), "--target", "6", "--workers", "2"]
    cmd += [arg for s in settings for arg in ("--set", s)]
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "RAY_ADDRESS": ray.get_runtime_context().gcs_address,
        "LLMVM_STORAGE_PATH": str(tmp_path / "storage"),
        "LLMVM_TEACHER__BASE_URL": f"{url}/v1",
        "LLMVM_TEACHER__API_KEY": KEY,
        "LLMVM_TEACHER__MODEL": "synth",
    }
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "task date: target reached" in proc.stdout

    rows = pq.read_table(out / "data.parquet").to_pylist()
    stats = json.loads((out / "stats.json").read_text())
    totals = stats["totals"]
    assert len(rows) == 6 == totals["kept"] == stats["tasks"]["date"]["kept"]
    assert totals["parse_rate"] == 1.0 and totals["failed_requests"] == 0
    assert totals["requested"] >= totals["generated"] >= totals["parsed"] >= totals["valid"]
    assert len({r["prompt"] for r in rows}) == 6
    run_id = json.loads((out / "run.json").read_text())["run_id"]
    seed_ids = {f"d{i}" for i in range(8)}
    for r in rows:
        assert (r["source"], r["run_id"], r["teacher"], r["task"]) == (
            "synthesis",
            run_id,
            "synth",
            "date",
        )
        assert r["encoding"] == "guided_json" and r["completion_by"] == "synthesis"
        assert r["template"] == f"completion/{r['unit'] % 3}"  # variants rotate per unit
        assert len(r["seed_ids"]) == 2 and set(r["seed_ids"]) <= seed_ids
        assert 0 < len(r["prompt"]) <= 48 and 0 < len(r["completion"]) <= 16


def test_data_synthesis_flag_makes_the_optimizer_synthesize(synth_service):
    """/v1/complete with data_synthesis: true → after a few real rows, the optimizer asks
    the task's (hosted) teacher for more, dedups them against the task's rows and records
    them as training rows with provenance; the task view shows the count and the funnel."""
    from llmvm_ray.dev.tasks import get_task

    url, root = synth_service
    task = get_task("date")
    client = Client(url=url, api_key=KEY, big_model="synth", small_model="synth")
    task_id = None
    for x in ["May 3, 1999", "June 1, 2001", "July 4, 1976"]:
        r = client.complete(
            task.dynamic_prompt(x), context=task.context, finetune=True, data_synthesis=True
        )
        assert r["status"] == 200
        task_id = r["llmvm"]["task_id"]
    headers = {"Authorization": f"Bearer {KEY}"}

    def view():
        body = httpx.get(f"{url}/v1/tasks/{task_id}", headers=headers).json()
        done = [e for e in body["events"] if e["event"].startswith("synthes")]
        return body if done else None

    body = wait_for(view, what="the task's synthesis")
    event = next(e for e in body["events"] if e["event"].startswith("synthes"))
    assert event["event"] == "synthesized", event
    assert event["added"] == 4 == body["examples"]["synthesized"]
    assert event["stop_reason"] == "target reached: 4 kept"
    assert event["funnel"]["kept"] == 4 and event["funnel"]["parsed"] >= 4

    def rows():
        found = list((root / "storage" / "datasets").rglob("*.parquet"))
        table = [r for f in found for r in pq.read_table(f).to_pylist()]
        return table if sum(r.get("source") == "synthesis" for r in table) == 4 else None

    table = wait_for(rows, what="the synthesized rows on disk")
    synthesized = [r for r in table if r["source"] == "synthesis"]
    real = {r["prompt"] for r in table if r["source"] == "teacher"}
    assert all(r["split"] == "train" and r["teacher"] == "synth" for r in synthesized)
    assert not real & {r["prompt"] for r in synthesized}
    assert len({r["run_id"] for r in synthesized}) == 1
    # each completion is the teacher's answer to the prompt under the task's settings
    import openai

    oa = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
    for r in synthesized:
        assert r["completion_by"] == "teacher"
        again = oa.completions.create(
            model="synth", prompt=task.context + r["prompt"], max_tokens=12, temperature=0
        )
        assert r["completion"] == again.choices[0].text
