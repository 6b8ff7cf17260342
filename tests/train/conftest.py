"""Fine-tune fixtures: a config with its own storage and registry, a dataset, helpers to wait
for a run and to check that a finished run gave every worker and CPU back.

The local Ray is the session's ``ray_session`` (tests/conftest.py): loopback, dashboard on
(Ray Train's own clean-up needs it), more logical CPUs than cores so 2 workers at 0.5 CPU
fit next to a Serve replica.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

# Small and fast: 2 workers at half a CPU, progress pushed often, short queue polls.
TRAIN_DEFAULTS: dict[str, Any] = {
    "num_workers": 2,
    "resources_per_worker": {"CPU": 0.5},
    "batch_size": 8,
    "lr": 5e-3,
    "max_steps": 12,
    "checkpoint_every_steps": 5,
    "eval_fraction": 0.1,
    "eval_max_new_tokens": 16,
    "progress_interval_s": 0.2,
    "log_every_steps": 5,
}
DATASET = "datasets/default/date"
RELEASE_TIMEOUT_S = 60.0


def wait_for(predicate: Callable[[], Any], timeout_s: float = 120.0, what: str = "") -> Any:
    """Poll until ``predicate()`` is truthy; return it. (A liveness bound, not a timing check.)"""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.1)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@dataclass
class Harness:
    config: Any
    service: Any
    model: Path
    dataset: str
    config_file: Path

    def create(self, **hyperparameters: Any) -> Any:
        return self.service.create(
            dataset=self.dataset,
            base_model=str(self.model),
            task_id="date",
            hyperparameters=hyperparameters,
        )

    def wait_running(self, run_id: str, min_step: int = 1, checkpoint: bool = False) -> Any:
        def ready() -> Any:
            run = self.service.get(run_id)
            assert not run.status.terminal, run.error
            if run.progress.step >= min_step and (not checkpoint or run.checkpoint_path):
                return run
            return None

        return wait_for(ready, what=f"{run_id} at step {min_step}")

    def assert_released(self, run: Any, cpu_before: float, pgs_before: set[str]) -> None:
        """Every worker process gone, placement groups removed, CPUs back."""
        import ray
        from ray.util.placement_group import placement_group_table

        assert run.workers, "the run never registered its workers"
        for worker in run.workers:
            wait_for(lambda w=worker: not pid_alive(w.pid), RELEASE_TIMEOUT_S, f"pid {worker.pid}")

        def leftover() -> set[str]:
            return {
                pg_id
                for pg_id, pg in placement_group_table().items()
                if pg_id not in pgs_before and pg["state"] != "REMOVED"
            }

        # A killed supervisor's placement group is removed by Ray once it sees the owner die:
        # asynchronously (measured: still listed just after the workers had exited).
        wait_for(lambda: not leftover(), RELEASE_TIMEOUT_S, "placement groups removed")
        # The run's supervisor exits once the run is recorded (no orphan actors).
        wait_for(lambda: not _actor_exists(run.supervisor), RELEASE_TIMEOUT_S, "supervisor exit")
        wait_for(
            lambda: ray.available_resources().get("CPU", 0.0) >= cpu_before - 1e-6,
            RELEASE_TIMEOUT_S,
            "CPUs back",
        )


def _actor_exists(name: str) -> bool:
    import ray

    try:
        ray.get_actor(name, namespace="llmvm")
    except ValueError:
        return False
    return True


def snapshot_resources() -> tuple[float, set[str]]:
    import ray
    from ray.util.placement_group import placement_group_table

    return ray.available_resources().get("CPU", 0.0), set(placement_group_table())


@pytest.fixture(scope="session")
def date_rows() -> list[dict[str, str]]:
    from llmvm_ray.dev.tasks import make_examples

    return make_examples("date", 96, seed=0)


def make_harness(tmp_path: Path, model: Path, rows: list[dict[str, str]], **train: Any) -> Harness:
    from llmvm_ray.config import load_config
    from llmvm_ray.store import datasets
    from llmvm_ray.store.fs import Storage
    from llmvm_ray.train.service import FinetuneService

    overrides = {
        "storage_path": str(tmp_path / "store"),
        "registry": {
            "actor_name": f"test-registry-{uuid.uuid4().hex[:8]}",
            "reconcile_interval_s": 0.5,
        },
        "train": {**TRAIN_DEFAULTS, **train},
        "train_queue": {"poll_interval_s": 0.2},
    }
    config = load_config(overrides=overrides)
    datasets.append_examples(Storage.from_uri(config.storage_path), "default", "date", rows)
    config_file = tmp_path / "llmvm.toml"
    config_file.write_text(_toml(overrides))
    return Harness(config, FinetuneService(config), model, DATASET, config_file)


@pytest.fixture
def harness(ray_session, tmp_path, tiny_llama, date_rows):
    h = make_harness(tmp_path, Path(tiny_llama), date_rows)
    yield h
    _cleanup(h)


def _cleanup(h: Harness) -> None:
    """Cancel whatever a failed test left running, then drop the test's registry actor."""
    import ray

    from llmvm_ray.errors import ConflictError

    for run in h.service.list():
        if not run.status.terminal:
            with contextlib.suppress(ConflictError):
                h.service.cancel(run.id)
            h.service.wait(run.id, timeout_s=RELEASE_TIMEOUT_S)
    with contextlib.suppress(ValueError):
        ray.kill(ray.get_actor(h.config.registry.actor_name, namespace=h.config.ray.namespace))


def _toml(overrides: dict[str, Any]) -> str:
    """The overrides as a TOML config file (for the CLI and job tests)."""
    import json

    lines = [f"storage_path = {json.dumps(overrides['storage_path'])}"]
    for section in ("registry", "train", "train_queue"):
        lines.append(f"[{section}]")
        for key, value in overrides[section].items():
            if isinstance(value, dict):
                inner = ", ".join(f"{k} = {json.dumps(v)}" for k, v in value.items())
                lines.append(f"{key} = {{ {inner} }}")
            else:
                lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"
