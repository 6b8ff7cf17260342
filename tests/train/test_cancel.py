"""Cancelling mid-run through every path, and queueing when resources are short.

Each test asserts the three promises: the registry says CANCELLED with the last checkpoint
kept, every worker process has exited, and the CPUs and placement group are back.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from llmvm_ray.ray_private import dashboard_url
from llmvm_ray.registry.records import RunStatus
from tests.conftest import submit_job
from tests.train.conftest import DATASET, RELEASE_TIMEOUT_S, snapshot_resources, wait_for

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[2]
LONG = 100_000  # steps: these runs only ever end by being cancelled


def assert_cancelled_with_checkpoint(run, mode: str) -> None:
    assert run.status == RunStatus.CANCELLED, run.error
    assert run.cancel_mode == mode
    assert run.cancel_requested_at and run.finished_at
    assert run.checkpoint_path and Path(run.checkpoint_path).is_dir()
    assert run.output_path is None and not run.metrics


def test_queued_behind_a_resource_hog_then_hard_cancelled_through_the_api(harness):
    """A run waits QUEUED while something else (think: Serve replicas) holds the CPUs,
    starts once they are free, and a cancel with no grace period kills it outright."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    cpu, pgs = snapshot_resources()
    hog = placement_group([{"CPU": cpu - 0.5}])
    ray.get(hog.ready())
    run = harness.create(max_steps=LONG, cancel_grace_s=0, checkpoint_every_steps=3)
    queued = wait_for(
        lambda: (r := harness.service.get(run.id)).queue_reason and r, what="queue reason"
    )
    assert queued.status == RunStatus.QUEUED and "CPU 1 needed" in queued.queue_reason
    remove_placement_group(hog)
    harness.wait_running(run.id, min_step=3, checkpoint=True)

    harness.service.cancel(run.id)
    done = harness.service.wait(run.id, timeout_s=RELEASE_TIMEOUT_S)
    assert_cancelled_with_checkpoint(done, "hard")
    harness.assert_released(done, cpu, pgs | {hog.id.hex()})


def test_cli_start_list_show_and_cooperative_cancel(harness):
    from typer.testing import CliRunner

    from llmvm_ray.train.cli import finetune_app

    cpu, pgs = snapshot_resources()
    cli = CliRunner()
    cfg = ["-c", str(harness.config_file)]
    started = cli.invoke(
        finetune_app,
        ["start", DATASET, "--model", str(harness.model), "--task-id", "date"]
        + ["-p", f"max_steps={LONG}", "-p", 'resources_per_worker={"CPU": 0.5}', *cfg],
    )
    assert started.exit_code == 0, started.output
    run_id = started.stdout.strip().splitlines()[-1]
    harness.wait_running(run_id, min_step=2)

    listed = cli.invoke(finetune_app, ["list", "--json", *cfg])
    assert listed.exit_code == 0 and run_id in listed.stdout
    shown = cli.invoke(finetune_app, ["show", run_id, *cfg])
    assert shown.exit_code == 0 and '"RUNNING"' in shown.stdout

    cancelled = cli.invoke(finetune_app, ["cancel", run_id, "--wait", *cfg])
    assert cancelled.exit_code == 0, cancelled.output
    assert "CANCELLED" in cancelled.stdout
    done = harness.service.get(run_id)
    assert_cancelled_with_checkpoint(done, "cooperative")
    assert done.checkpoint_step == done.progress.step  # saved where it stopped
    harness.assert_released(done, cpu, pgs)

    again = cli.invoke(finetune_app, ["cancel", run_id, *cfg])
    assert again.exit_code == 1 and "already CANCELLED" in again.output


def test_ctrl_c_on_foreground_wait(harness):
    import ray

    cpu, pgs = snapshot_resources()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmvm_ray.train.cli", "start", DATASET]
        + ["--model", str(harness.model), "--wait", "-c", str(harness.config_file)]
        + ["--address", ray.get_runtime_context().gcs_address, "-p", f"max_steps={LONG}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        run_id = proc.stdout.readline().strip()
        assert run_id.startswith("ftjob-"), proc.stderr.read() if proc.poll() else run_id
        harness.wait_running(run_id, min_step=2)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=RELEASE_TIMEOUT_S) == 130, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    done = harness.service.get(run_id)
    assert done.origin == "cli"
    assert_cancelled_with_checkpoint(done, "cooperative")
    harness.assert_released(done, cpu, pgs)


def test_ray_job_stop(harness):
    from ray.job_submission import JobStatus, JobSubmissionClient

    cpu, pgs = snapshot_resources()
    client = JobSubmissionClient(f"http://{dashboard_url()}")
    entrypoint = (
        f"{sys.executable} {REPO / 'jobs/finetune.py'} --config {harness.config_file} "
        f"--dataset {DATASET} --base-model {harness.model} --task-id date "
        f"-p max_steps={LONG}"
    )

    job_id = submit_job(client, entrypoint=entrypoint)
    try:
        run = wait_for(
            lambda: next((r for r in harness.service.list() if r.origin == "job"), None),
            what="the job's run",
        )
        harness.wait_running(run.id, min_step=2)
        client.stop_job(job_id)
        wait_for(
            lambda: client.get_job_status(job_id) == JobStatus.STOPPED,
            RELEASE_TIMEOUT_S,
            "job STOPPED",
        )
    finally:
        if not client.get_job_status(job_id).is_terminal():
            client.stop_job(job_id)
    done = harness.service.wait(run.id, timeout_s=RELEASE_TIMEOUT_S)
    assert done.status == RunStatus.CANCELLED
    # "lost": Ray's SIGKILL (3 s after SIGTERM) beat the cooperative stop; the registry
    # still records CANCELLED because the cancel had been asked for.
    assert done.cancel_mode in {"cooperative", "lost"}
    assert done.checkpoint_path and Path(done.checkpoint_path).is_dir()
    harness.assert_released(done, cpu, pgs)
