"""``llmvm finetune`` against a ``ray start --head`` cluster, each command its own process.

The journey the docs describe: start a run and walk away (no ``--wait``), then follow it,
list it and cancel another from other shells. Before issue 16 a run started without
``--wait`` stayed QUEUED forever: its supervisor's ``run`` call died with the CLI process.
"""

from __future__ import annotations

import json

import pytest

from tests.journeys.conftest import llmvm, user_env, write_toml
from tests.train.conftest import wait_for

pytestmark = pytest.mark.ray

LONG = 100_000  # steps: a run that only ends by being cancelled


@pytest.fixture(scope="module")
def setup(head, tmp_path_factory, tiny_llama):
    from llmvm_ray.dev.tasks import make_examples
    from llmvm_ray.store import datasets
    from llmvm_ray.store.fs import Storage

    root = tmp_path_factory.mktemp("journey-finetune")
    storage = root / "store"
    datasets.append_examples(
        Storage.from_uri(str(storage)), "default", "date", make_examples("date", 64, seed=0)
    )
    config = write_toml(
        root / "llmvm.toml",
        {
            "storage_path": str(storage),
            "registry": {"actor_name": "journey-registry", "reconcile_interval_s": 0.5},
            "train": {
                "num_workers": 1,
                "resources_per_worker": {"CPU": 0.5},
                "batch_size": 8,
                "checkpoint_every_steps": 2,
                "progress_interval_s": 0.2,
            },
            "train_queue": {"poll_interval_s": 0.2},
        },
    )
    return {"config": str(config), "model": str(tiny_llama), "env": user_env(head)}


def start(setup, *params: str, wait: bool = False):
    args = ["finetune", "start", "datasets/default/date", "-m", setup["model"]]
    args += ["-c", setup["config"], "--task-id", "date"]
    for p in params:
        args += ["-p", p]
    return llmvm(*args, *(["--wait"] if wait else []), env=setup["env"])


def show(setup, run_id: str) -> dict:
    done = llmvm("finetune", "show", run_id, "-c", setup["config"], env=setup["env"])
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_run_started_without_wait_finishes_after_the_command_exits(setup):
    started = start(setup, "max_steps=6")
    assert started.returncode == 0, started.stderr
    run_id = started.stdout.strip().splitlines()[-1]
    record = wait_for(
        lambda: (r := show(setup, run_id))["status"] in ("SUCCEEDED", "FAILED") and r,
        240,
        f"run {run_id} to finish after `finetune start` exited",
    )
    assert record["status"] == "SUCCEEDED", record.get("error")
    assert record["output_path"] and record["origin"] == "cli"
    listed = llmvm("finetune", "list", "--json", "-c", setup["config"], env=setup["env"])
    assert listed.returncode == 0, listed.stderr
    assert run_id in {json.loads(line)["id"] for line in listed.stdout.splitlines()}


def test_cancel_from_another_process(setup):
    started = start(setup, f"max_steps={LONG}")
    assert started.returncode == 0, started.stderr
    run_id = started.stdout.strip().splitlines()[-1]
    wait_for(lambda: show(setup, run_id)["status"] == "RUNNING", 180, f"{run_id} RUNNING")
    cancelled = llmvm(
        "finetune", "cancel", run_id, "--wait", "-c", setup["config"], env=setup["env"]
    )
    assert cancelled.returncode == 0, cancelled.stderr
    assert show(setup, run_id)["status"] == "CANCELLED"


def test_a_run_with_wait_follows_it_and_exits_zero(setup):
    done = start(setup, "max_steps=4", wait=True)
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.strip().splitlines()[-1]
    assert show(setup, run_id)["status"] == "SUCCEEDED"
