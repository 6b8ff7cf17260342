"""The registry: legal status moves, queries, durability across actor kills and Ray restarts."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from llmvm_ray.errors import ConfigError, ConflictError, NotFoundError
from llmvm_ray.registry.actor import RegistryActor
from llmvm_ray.registry.records import DatasetInfo, FinetuneRun, RunStatus, new_run_id


def make_run(task_id: str = "task-a", tenant: str = "default", **kw) -> FinetuneRun:
    return FinetuneRun(
        id=new_run_id(),
        tenant=tenant,
        task_id=task_id,
        base_model="tiny",
        base_model_path="/models/tiny",
        dataset=DatasetInfo(uri="/d.parquet", rows=3, content_hash="sha256:0", source="d"),
        params={"lr": 0.001},
        seed=0,
        **kw,
    )


@pytest.fixture
def registry(tmp_path):
    # The actor class used as a plain object: same logic, no Ray needed.
    return RegistryActor(str(tmp_path / "store"), "llmvm", reconcile_interval_s=0)


def test_lifecycle_and_queries(registry, tmp_path):
    a, b = make_run("task-a"), make_run("task-b", tenant="acme")
    registry.create(a)
    registry.create(b)
    with pytest.raises(ConflictError):  # an id names one run (the same record again: a retry)
        registry.create(a.model_copy(update={"task_id": "task-other"}))
    assert registry.try_start(a.id, max_concurrent=1)
    assert not registry.try_start(b.id, max_concurrent=1)  # one at a time
    registry.update(a.id, {"progress": {"step": 3, "total_steps": 10}})
    registry.finish(a.id, "SUCCEEDED", {"metrics": {"exact_match": 1.0}, "output_path": "/o"})
    with pytest.raises(ConflictError):
        registry.finish(a.id, "FAILED")
    with pytest.raises(ConflictError):
        registry.update(a.id, {"progress": {"step": 4}})

    registry.annotate(a.id, {"gate": {"passed": True}})
    registry.annotate(a.id, {"promoted": True})
    got = registry.get(a.id)
    assert got.annotations == {"gate": {"passed": True}, "promoted": True}
    assert got.status == RunStatus.SUCCEEDED and got.progress.step == 3
    assert got.started_at and got.finished_at and got.metrics == {"exact_match": 1.0}
    assert [r.id for r in registry.list(task_id="task-a")] == [a.id]
    assert [r.id for r in registry.list(tenant="acme")] == [b.id]
    assert [r.id for r in registry.list(status="queued")] == [b.id]
    assert [r.id for r in registry.list()] == [b.id, a.id]  # newest first
    assert [r.id for r in registry.list(after=b.id)] == [a.id]
    assert registry.latest_successful("task-a").id == a.id
    assert registry.latest_successful("task-b") is None
    with pytest.raises(NotFoundError):
        registry.get("ftjob-nope")

    # A fresh registry on the same storage sees exactly the same records.
    again = RegistryActor(str(tmp_path / "store"), "llmvm", reconcile_interval_s=0)
    assert again.get(a.id) == got
    assert again.get(b.id).status == RunStatus.QUEUED


def test_fifo_start_order(registry):
    first, second = make_run(), make_run()
    registry.create(first)
    registry.create(second)
    assert not registry.try_start(second.id, max_concurrent=2)  # the older one goes first
    assert registry.try_start(first.id, max_concurrent=2)
    assert registry.try_start(second.id, max_concurrent=2)


def test_cancel_rules(registry):
    run = make_run()
    registry.create(run)
    registry.request_cancel(run.id)
    with pytest.raises(ConflictError, match="already being cancelled"):
        registry.request_cancel(run.id)
    registry.finish(run.id, "CANCELLED")
    with pytest.raises(ConflictError, match="already CANCELLED"):
        registry.request_cancel(run.id)
    with pytest.raises(NotFoundError):
        registry.request_cancel("ftjob-missing")


def test_concurrent_cancels_one_wins(registry):
    run = make_run()
    registry.create(run)
    outcomes: list[str] = []
    barrier = threading.Barrier(8)

    def cancel() -> None:
        barrier.wait()
        try:
            registry.request_cancel(run.id)
            outcomes.append("ok")
        except ConflictError:
            outcomes.append("conflict")

    threads = [threading.Thread(target=cancel) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["conflict"] * 7 + ["ok"]


def test_unreadable_record_is_skipped(registry, tmp_path):
    run = make_run()
    registry.create(run)
    (tmp_path / "store/registry/runs/ftjob-broken.json").write_text("{not json")
    again = RegistryActor(str(tmp_path / "store"), "llmvm", reconcile_interval_s=0)
    assert [r.id for r in again.list()] == [run.id]


# -- with Ray ----------------------------------------------------------------------------------


def _wait_for(predicate, timeout_s: float = 30.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


@pytest.mark.ray
def test_survives_kill_9_and_reconciles_lost_runs(ray_session, registry_config):
    from llmvm_ray.registry.client import get_registry

    client = get_registry(registry_config)
    done, live, cancelling = make_run(), make_run(), make_run()
    for run in (done, live, cancelling):
        client.create(run)
    client.finish(done.id, "FAILED", {"error": "boom"})
    # Two runs whose supervisor never existed: they are "lost" as soon as the registry looks.
    client.try_start(live.id, 5)
    client.attach(live.id, "llmvm-ft-does-not-exist")
    client.request_cancel(cancelling.id)
    client.attach(cancelling.id, "llmvm-ft-also-missing")

    pid = client.info()["pid"]
    os.kill(pid, signal.SIGKILL)
    # The same handle keeps working once Ray restarts the actor, which reloads the store.
    assert _wait_for(lambda: client.info()["pid"] != pid)
    assert client.get(done.id).error == "boom"
    lost = _wait_for(lambda: client.get(live.id) if client.get(live.id).status.terminal else None)
    assert lost.status == RunStatus.FAILED and "supervisor" in lost.error
    assert client.get(cancelling.id).status == RunStatus.CANCELLED


@pytest.mark.ray
def test_get_registry_refuses_other_storage(ray_session, registry_config, tmp_path):
    from llmvm_ray.registry.client import get_registry

    get_registry(registry_config)
    other = registry_config.model_copy(update={"storage_path": str(tmp_path / "other")})
    with pytest.raises(ConfigError, match="stores under"):
        get_registry(other)


_RESTART_SCRIPT = """
import json, sys
import ray
from llmvm_ray.config import Config, RayConfig
from llmvm_ray.registry.client import get_registry
from llmvm_ray.registry.records import FinetuneRun
from llmvm_ray.runtime import init_ray

config = Config.model_validate_json(sys.argv[1])
ok, running = (FinetuneRun.model_validate_json(r) for r in sys.argv[2:4])

init_ray(RayConfig(num_cpus=1, include_dashboard=False))  # a cluster of its own
registry = get_registry(config)
registry.create(ok)
registry.try_start(ok.id, 5)
registry.finish(ok.id, "SUCCEEDED", {"output_path": "/adapter"})
registry.create(running)
registry.try_start(running.id, 5)
registry.attach(running.id, "llmvm-ft-from-the-old-cluster")
before = [r.model_dump(mode="json") for r in registry.list()]

ray.shutdown()  # the whole cluster goes, the detached registry actor with it
init_ray(RayConfig(num_cpus=1, include_dashboard=False))  # a fresh one, same storage_path
after = [r.model_dump(mode="json") for r in get_registry(config).list()]
print("RUNS=" + json.dumps([before, after]))
"""


@pytest.mark.ray
def test_survives_ray_restart(registry_config):
    """Records written in one cluster are all there in the next one on the same storage;
    the run that was RUNNING when its cluster went away is reconciled to FAILED.

    Runs in a subprocess so that restarting Ray does not disturb the session's cluster.
    """
    import json
    import subprocess
    import sys

    ok, running = make_run(), make_run()
    out = subprocess.run(
        [sys.executable, "-c", _RESTART_SCRIPT, registry_config.model_dump_json()]
        + [ok.model_dump_json(), running.model_dump_json()],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("RUNS="))
    before, after = (
        {r["id"]: FinetuneRun.model_validate(r) for r in runs}
        for runs in json.loads(line[len("RUNS=") :])
    )
    assert after[ok.id] == before[ok.id]
    assert after[ok.id].status == RunStatus.SUCCEEDED
    assert before[running.id].status == RunStatus.RUNNING
    assert after[running.id].status == RunStatus.FAILED
    assert "cluster restart" in after[running.id].error


def test_a_retried_create_or_start_is_idempotent(registry, tmp_path):
    """Ray retries a call whose actor restarted mid-way: the same record again is the same
    run, and a start that already happened answers True again (the record loaded anew)."""
    run = make_run()
    registry.create(run)
    again = RegistryActor(str(tmp_path / "store"), "llmvm", reconcile_interval_s=0)
    assert again.create(run).id == run.id  # the retried call, on the restarted actor
    with pytest.raises(ConflictError):
        again.create(run.model_copy(update={"task_id": "another"}))
    assert again.try_start(run.id, 1) is True
    assert again.try_start(run.id, 1) is True
    assert again.get(run.id).status == RunStatus.RUNNING
