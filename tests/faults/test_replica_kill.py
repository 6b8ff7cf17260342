"""A model replica killed (``ray.kill``, as a crash or an OOM kill would) under load:
non-streaming requests that it held are retried once on the other replica, and a seeded
request gives the same text either way. The figures asserted: requests failed (0), texts
changed (0)."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from llmvm_ray.config import load_config
from llmvm_ray.serve.deploy import ServiceRunner

pytestmark = pytest.mark.ray

APP = "faults-kill"
CLIENTS, PER_CLIENT = 6, 12


@pytest.fixture(scope="module")
def two_replicas(ray_session, serve_port, tmp_path_factory, tiny_llama):
    config = load_config(
        overrides={
            "storage_path": str(tmp_path_factory.mktemp("faults-kill")),
            "optimizer": {"enabled": False},
            "serve": {"port": serve_port, "app_name": APP, "route_prefix": f"/{APP}"},
            "models": [
                {"name": "tiny", "model_uri": str(tiny_llama), "num_cpus": 0.25, "num_replicas": 2}
            ],
        }
    )
    runner = ServiceRunner(config, shutdown_ray=False).start()
    yield runner.url
    runner.stop()


def _replicas() -> list[str]:
    import ray
    from ray.util.state import list_actors

    address = ray.get_runtime_context().gcs_address  # several Rays may run on this machine
    actors = list_actors(address=address, filters=[("state", "=", "ALIVE")], limit=1000)
    return [a.name for a in actors if a.class_name == f"ServeReplica:{APP}:model-tiny"]


def test_killing_a_replica_under_load_fails_no_request(two_replicas):
    import ray

    url = two_replicas

    def body(i: int) -> dict:
        return {"model": "tiny", "prompt": f"Request {i % 5}", "max_tokens": 24, "seed": i % 5}

    with httpx.Client(base_url=url, timeout=120) as http:
        reference = {i: http.post("/v1/completions", json=body(i)).json() for i in range(5)}
    assert len(_replicas()) == 2
    outcomes: list[tuple[int, int, str]] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        with httpx.Client(base_url=url, timeout=120) as http:
            for j in range(PER_CLIENT):
                i = c * PER_CLIENT + j
                r = http.post("/v1/completions", json=body(i))
                text = r.json()["choices"][0]["text"] if r.status_code == 200 else r.text
                with lock:
                    outcomes.append((i, r.status_code, text))

    threads = [threading.Thread(target=client, args=(c,)) for c in range(CLIENTS)]
    for t in threads:
        t.start()
    while len(outcomes) < CLIENTS * 2:  # traffic is flowing
        time.sleep(0.05)
    victim = _replicas()[0]
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=False)
    for t in threads:
        t.join(timeout=300)
    failed = [(i, s, t) for i, s, t in outcomes if s != 200]
    changed = [
        i for i, s, t in outcomes if s == 200 and t != reference[i % 5]["choices"][0]["text"]
    ]
    assert len(outcomes) == CLIENTS * PER_CLIENT
    assert failed == [] and changed == [], (failed[:3], changed[:3])
