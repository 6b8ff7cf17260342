"""``kill -9`` of the optimizer actor's process under load: every row it acknowledged is in
the dataset afterwards, the restarted actor resumes by itself (it flushes the replayed rows
with no further traffic), and requests in flight wait for it rather than fail. The figures
asserted: rows acknowledged vs found, requests failed."""

from __future__ import annotations

import os
import signal
import threading

import httpx
import pytest

from llmvm_ray.config import load_config
from llmvm_ray.serve.deploy import ServiceRunner
from llmvm_ray.store import datasets
from llmvm_ray.store.fs import Storage
from tests.train.conftest import wait_for

pytestmark = pytest.mark.ray

APP = "faults-optimizer"
CLIENTS, PER_CLIENT = 4, 8


@pytest.fixture(scope="module")
def app(ray_session, serve_port, tmp_path_factory, tiny_llama):
    storage = tmp_path_factory.mktemp("faults-optimizer")
    model = {"model_uri": str(tiny_llama), "num_cpus": 0.25}
    config = load_config(
        overrides={
            "storage_path": str(storage),
            "registry": {"actor_name": f"{APP}-registry"},
            "serve": {"port": serve_port, "app_name": APP, "route_prefix": f"/{APP}"},
            "teacher": {"model": "teacher"},
            # Rows stay buffered (only journaled) for the whole load: the kill finds them there.
            "optimizer": {"flush_interval_s": 15, "flush_rows": 1000, "min_train_examples": 10**6},
            "models": [{"name": "teacher", **model}, {"name": "student", **model}],
        }
    )
    runner = ServiceRunner(config, shutdown_ray=False).start()
    yield runner.url, storage
    runner.stop()


def _optimizer_pid() -> int:
    import ray
    from ray.util.state import list_actors

    actors = list_actors(
        address=ray.get_runtime_context().gcs_address,
        filters=[("state", "=", "ALIVE"), ("name", "=", f"llmvm-optimizer-{APP}")],
    )
    assert len(actors) == 1, actors
    return actors[0].pid


def test_kill_9_of_the_optimizer_loses_no_acknowledged_row(app):
    url, storage = app
    body = {"context": "Add one.\n", "finetune": True, "max_tokens": 4, "temperature": 0}
    acknowledged: list[str] = []
    failed: list[tuple[int, str]] = []
    task_ids: set[str] = set()
    lock = threading.Lock()

    def client(c: int) -> None:
        with httpx.Client(base_url=url, timeout=180) as http:
            for j in range(PER_CLIENT):
                prompt = f"What is {c * PER_CLIENT + j} plus one?"
                r = http.post("/v1/complete", json={**body, "prompt": prompt})
                with lock:
                    if r.status_code == 200:
                        acknowledged.append(prompt)
                        task_ids.add(r.json()["llmvm"]["task_id"])
                    else:
                        failed.append((r.status_code, r.text[:200]))

    before = _optimizer_pid()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(CLIENTS)]
    for t in threads:
        t.start()
    wait_for(lambda: len(acknowledged) >= CLIENTS * 2, 120, "traffic")
    os.kill(before, signal.SIGKILL)
    for t in threads:
        t.join(timeout=300)
    assert _optimizer_pid() != before  # Ray restarted it
    (task_id,) = task_ids
    path = datasets.dataset_path("default", task_id)
    fs = Storage.from_uri(str(storage))

    def stored() -> set[str]:
        if not fs.is_dir(fs.path(path)):
            return set()
        return {r["prompt"] for r in datasets.read_examples(fs, path)}

    # No request after the load: the restarted actor flushes the replayed rows on its own.
    found = wait_for(lambda: (s := stored()) >= set(acknowledged) and s, 120, "the rows")
    assert len(acknowledged) + len(failed) == CLIENTS * PER_CLIENT
    assert failed == [], failed
    assert set(acknowledged) <= found
    with httpx.Client(base_url=url, timeout=60) as http:
        view = http.get(f"/v1/tasks/{task_id}").json()
    assert view["examples"]["recorded"] == len(found)
