"""Worker failures (resume from checkpoint, or FAILED beyond the retry budget) and bad input."""

from __future__ import annotations

import os
import signal
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llmvm_ray.errors import ConflictError, InvalidRequestError, NotFoundError
from llmvm_ray.registry.records import RunStatus
from tests.train.conftest import RELEASE_TIMEOUT_S, snapshot_resources, wait_for

pytestmark = pytest.mark.ray


def _kill_rank(run, rank: int) -> int:
    pid = next(w.pid for w in run.workers if w.rank == rank)
    os.kill(pid, signal.SIGKILL)
    return pid


def test_resumes_after_a_worker_is_killed_then_fails_beyond_the_retry_budget(harness):
    """max_failures=1: the first kill resumes from the last checkpoint in a new worker
    group; the second is one failure too many and the run ends FAILED with the error."""
    cpu, pgs = snapshot_resources()
    run = harness.create(max_steps=100_000, checkpoint_every_steps=3, max_failures=1)
    # Two checkpoints in: Train has surely taken in the first (a worker killed in the middle
    # of reporting one would, rightly, leave Train resuming from the one before).
    first = wait_for(
        lambda: (r := harness.service.get(run.id)).checkpoint_step and r.checkpoint_step >= 6 and r,
        what="two checkpoints",
    )
    killed = _kill_rank(first, 1)

    def resumed_and_training():
        r = harness.service.get(run.id)
        assert not r.status.terminal, r.error
        p = r.progress
        ok = p.attempt == 2 and p.resumed_from_step is not None and p.step > p.resumed_from_step
        return r if ok and len(r.workers) == 2 else None

    second = wait_for(resumed_and_training, what="attempt 2 training")
    # From a checkpoint (every 3 steps), not from scratch. Not necessarily the one we saw:
    # training went on for a few steps between reading the registry and the kill.
    resumed = second.progress.resumed_from_step
    assert resumed >= 3 and resumed % 3 == 0
    assert killed not in {w.pid for w in second.workers}  # a new worker group
    assert {w.attempt for w in second.workers} == {2}

    _kill_rank(second, 1)
    done = harness.service.wait(run.id, timeout_s=RELEASE_TIMEOUT_S)
    assert done.status == RunStatus.FAILED
    assert done.error and done.error.startswith("WorkerGroupError")
    assert done.checkpoint_path  # what it had is still there to resume by hand
    harness.assert_released(done, cpu, pgs)


def test_killed_supervisor_fails_the_run_and_frees_everything(harness):
    """The supervisor is the run's owner: if it dies, training stops with it and the
    registry, not seeing it any more, marks the run FAILED (never stuck RUNNING)."""
    import ray

    cpu, pgs = snapshot_resources()
    run = harness.create(max_steps=100_000)
    running = harness.wait_running(run.id, min_step=2)
    ray.kill(ray.get_actor(running.supervisor, namespace=harness.config.ray.namespace))
    done = harness.service.wait(run.id, timeout_s=RELEASE_TIMEOUT_S)
    assert done.status == RunStatus.FAILED and "supervisor" in done.error
    harness.assert_released(done, cpu, pgs)


# -- bad input: clear, typed errors, nothing registered -----------------------------------------


def test_bad_input_is_refused_up_front(harness, tmp_path):
    service = harness.service
    model = str(harness.model)

    def refused(param: str, **kw) -> InvalidRequestError:
        args = {"dataset": harness.dataset, "base_model": model, **kw}
        with pytest.raises(InvalidRequestError) as info:
            service.create(**args)
        assert info.value.param == param, info.value.message
        return info.value

    assert "not found" in refused("dataset", dataset="datasets/nobody/none").message
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"prompt": pa.array([], pa.string()), "completion": []}), empty)
    assert "no rows" in refused("dataset", dataset=str(empty)).message
    corrupt = tmp_path / "corrupt.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b"], "completion": ["x", None]}), corrupt)
    assert "row 1" in refused("dataset", dataset=str(corrupt)).message
    assert "unknown base model" in refused("model", base_model="no-such/model").message
    refused("model", base_model=str(tmp_path / "missing-folder"))
    refused("hyperparameters.lr", hyperparameters={"lr": -1})
    refused("hyperparameters.zero_stage", hyperparameters={"zero_stage": 4})
    refused("hyperparameters.method", hyperparameters={"method": "qlora"})
    refused("hyperparameters.bogus", hyperparameters={"bogus": 1})
    big = refused("hyperparameters.num_workers", hyperparameters={"num_workers": 1000})
    assert "whole cluster" in big.message
    refused("tenant", tenant="../other")
    assert service.list() == []  # nothing was registered

    with pytest.raises(NotFoundError):
        service.get("ftjob-unknown")
    with pytest.raises(NotFoundError):
        service.cancel("ftjob-unknown")
    with pytest.raises(InvalidRequestError):
        service.list(status="sleeping")


def test_cancel_while_queued_twice_at_once_and_after_the_end(harness):
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    cpu, _ = snapshot_resources()
    hog = placement_group([{"CPU": cpu}])  # nothing left: the run can only queue
    ray.get(hog.ready())
    try:
        run = harness.create()
        wait_for(lambda: harness.service.get(run.id).queue_reason, what="queued")

        outcomes: list[str] = []
        barrier = threading.Barrier(2)

        def cancel() -> None:
            barrier.wait()
            try:
                harness.service.cancel(run.id)
                outcomes.append("ok")
            except ConflictError as exc:
                outcomes.append(exc.message)

        threads = [threading.Thread(target=cancel) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert outcomes.count("ok") == 1
        assert any("already being cancelled" in o for o in outcomes)

        done = harness.service.wait(run.id, timeout_s=RELEASE_TIMEOUT_S)
        assert done.status == RunStatus.CANCELLED and done.cancel_mode == "queued"
        assert done.started_at is None and not done.workers
        with pytest.raises(ConflictError, match="already CANCELLED") as info:
            harness.service.cancel(run.id)
        assert info.value.status == 409
    finally:
        remove_placement_group(hog)
