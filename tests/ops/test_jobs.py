"""``jobs/`` entrypoints submitted with Ray's job API to a real ``ray start --head`` cluster.

One cluster for the module (start-up ~5 s). Each job runs the documented command,
``python jobs/<name>.py --config <file>``, from the repository as the job's working_dir;
the tests then look at the cluster from outside: HTTP against the deployed app, the
registry through another job (``python -m llmvm_ray.train.cli show``), Ray's state API
for left-over actors and placement groups.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, submit_job
from tests.ops.cluster import REPO, cluster_env, start_head
from tests.train.conftest import wait_for

pytestmark = pytest.mark.ray

LONG = 100_000  # steps: a run that only ever ends by being stopped
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


@pytest.fixture(scope="module")
def head():
    for key in ("RAY_AUTH_MODE", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"):
        os.environ.setdefault(key, cluster_env()[key])
    h = start_head(num_cpus=4)
    yield h
    h.stop()


@pytest.fixture(scope="module")
def jobs(head):
    from ray.job_submission import JobSubmissionClient

    # The job agent comes up a moment after the dashboard answers.
    return wait_for(lambda: _client(JobSubmissionClient, head), 60, "job API")


def _client(cls, head):
    try:
        client = cls(head.dashboard_url)
        client.list_jobs()
        return client
    except (ConnectionError, RuntimeError):
        return None


def submit(jobs, entrypoint: str) -> str:
    return submit_job(
        jobs,
        entrypoint=entrypoint,
        runtime_env={"working_dir": str(REPO), "excludes": [".git", "tests", "benchmarks"]},
    )


def finish(jobs, job_id: str, timeout_s: float = 120.0) -> tuple[str, str]:
    try:
        status = wait_for(
            lambda: (s := str(jobs.get_job_status(job_id).value)) in TERMINAL and s,
            timeout_s,
            f"job {job_id}",
        )
    except AssertionError as exc:
        jobs.stop_job(job_id)
        raise AssertionError(f"{exc}; its log:\n{jobs.get_job_logs(job_id)}") from None
    return status, jobs.get_job_logs(job_id)


def write_config(path: Path, storage: Path, port: int, models: list[tuple[str, str]]) -> Path:
    lines = [
        f"storage_path = {json.dumps(str(storage))}",
        "[serve]",
        'host = "127.0.0.1"',
        f"port = {port}",
        'app_name = "ops-test"',
        "[optimizer]",
        "enabled = false",
        "[registry]",
        'actor_name = "ops-test-registry"',
        "reconcile_interval_s = 0.5",
        "[train]",
        "num_workers = 2",
        "resources_per_worker = { CPU = 0.5 }",
        "batch_size = 8",
        "lr = 0.005",
        "checkpoint_every_steps = 3",
        "progress_interval_s = 0.2",
        "[train_queue]",
        "poll_interval_s = 0.2",
    ]
    for name, uri in models:
        lines += [
            "[[models]]",
            f"name = {json.dumps(name)}",
            f"model_uri = {json.dumps(uri)}",
            "num_cpus = 0.25",
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_llama):
    """Config files (one model, then two), a storage root with a recorded dataset."""
    from llmvm_ray.dev.tasks import make_examples
    from llmvm_ray.store import datasets
    from llmvm_ray.store.fs import Storage

    root = tmp_path_factory.mktemp("ops-jobs")
    storage = root / "store"
    datasets.append_examples(
        Storage.from_uri(str(storage)), "default", "date", make_examples("date", 96, seed=0)
    )
    port = free_port()
    one = write_config(root / "one.toml", storage, port, [("tiny", str(tiny_llama))])
    two = write_config(
        root / "two.toml", storage, port, [("tiny", str(tiny_llama)), ("tiny2", str(tiny_llama))]
    )
    bad = write_config(root / "bad.toml", storage, port, [])
    return {"one": one, "two": two, "bad": bad, "port": port, "model": tiny_llama}


def model_ids(port: int) -> list[str]:
    r = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=30)
    r.raise_for_status()
    return sorted(m["id"] for m in r.json()["data"])


def deploy(jobs, config: Path, *flags: str) -> str:
    cmd = " ".join(["python jobs/deploy.py --config", str(config), *flags])
    status, logs = finish(jobs, submit(jobs, cmd))
    assert status == "SUCCEEDED", logs
    return logs


def test_deploy_job_deploys_then_deletes_the_app(jobs, setup):
    port = setup["port"]
    logs = deploy(jobs, setup["one"])
    assert "deploying app 'ops-test'" in logs and "is RUNNING at" in logs
    assert model_ids(port) == ["tiny"]
    r = httpx.post(
        f"http://127.0.0.1:{port}/v1/completions",
        json={"model": "tiny", "prompt": "March 5, 2021", "max_tokens": 4, "seed": 1},
        timeout=60,
    )
    assert r.status_code == 200 and r.json()["choices"][0]["text"], r.text

    logs = deploy(jobs, setup["one"], "--delete")
    assert "app 'ops-test' deleted" in logs
    assert httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=30).status_code == 404


@pytest.mark.slow
def test_deploy_job_updates_the_running_app_in_place(jobs, setup):
    """The same job with a changed config (a second model) updates the app (~1 min)."""
    port = setup["port"]
    deploy(jobs, setup["one"])
    assert model_ids(port) == ["tiny"]
    logs = deploy(jobs, setup["two"])
    assert "updating app 'ops-test'" in logs
    assert model_ids(port) == ["tiny", "tiny2"]
    deploy(jobs, setup["two"], "--delete")


def test_deploy_job_fails_on_a_bad_config(jobs, setup):
    status, logs = finish(jobs, submit(jobs, f"python jobs/deploy.py --config {setup['bad']}"))
    assert status == "FAILED"
    assert "no models configured" in logs


def test_ray_job_stop_during_a_deploy_removes_the_new_app(jobs, head, setup, tmp_path):
    """A deploy that cannot finish (its model asks for more CPUs than the cluster has, with
    the fit check off as on an autoscaling cluster) is stopped; the app it created is
    deleted again, not left DEPLOYING forever."""
    config = tmp_path / "stuck.toml"
    text = setup["one"].read_text()
    text = text.replace(
        'app_name = "ops-test"',
        'app_name = "ops-stuck"\nroute_prefix = "/stuck"\ncheck_fits = false',
    )
    config.write_text(text.replace("num_cpus = 0.25", "num_cpus = 64"))  # never placeable
    job_id = submit(jobs, f"python jobs/deploy.py --config {config}")
    wait_for(
        lambda: (
            "deploying app 'ops-stuck'" in jobs.get_job_logs(job_id)
            and "ops-stuck" in _serve_apps(head)
        ),
        120,
        "the app to exist",
    )
    jobs.stop_job(job_id)
    status, logs = finish(jobs, job_id, timeout_s=60)
    assert status == "STOPPED", logs
    assert "deleting the app 'ops-stuck' this job created" in logs
    # Asked to go (Serve's controller finishes a delete on its own, ~20 s here).
    wait_for(
        lambda: (_serve_apps(head).get("ops-stuck") or {}).get("status") in (None, "DELETING"),
        60,
        "the app to be deleted",
    )


def test_a_deploy_that_cannot_fit_the_cluster_exits_two_at_once(jobs, head, setup, tmp_path):
    config = tmp_path / "big.toml"
    text = setup["one"].read_text().replace('app_name = "ops-test"', 'app_name = "ops-big"')
    config.write_text(text.replace("num_cpus = 0.25", "num_cpus = 64"))
    status, logs = finish(jobs, submit(jobs, f"python jobs/deploy.py --config {config}"))
    assert status == "FAILED" and "needs 64.1 CPUs" in logs and "cluster has 4" in logs, logs
    assert "ops-big" not in _serve_apps(head)


@pytest.mark.slow
def test_deploy_job_exits_one_when_the_deploy_fails(jobs, setup, tmp_path):
    """A model folder that is not there: every replica fails to start, Serve gives up after
    its retries (DEPLOY_FAILED) and so does the job, with exit code 1 (~1 min)."""
    config = tmp_path / "broken.toml"
    text = setup["one"].read_text().replace('app_name = "ops-test"', 'app_name = "ops-broken"')
    text = text.replace(f'"{setup["model"]}"', json.dumps(str(tmp_path / "no-such-model")))
    config.write_text(text.replace("[serve]", '[serve]\nroute_prefix = "/broken"'))
    status, logs = finish(jobs, submit(jobs, f"python jobs/deploy.py --config {config}"), 300)
    assert status == "FAILED", logs
    assert "DEPLOY_FAILED" in logs
    deploy(jobs, config, "--delete")


def _serve_apps(head) -> dict:
    """Serve's applications, from the dashboard's REST API (what `serve status` reads)."""
    r = httpx.get(f"{head.dashboard_url}/api/serve/applications/", timeout=30)
    r.raise_for_status()
    return r.json().get("applications") or {}


def test_finetune_job_is_cancelled_by_ray_job_stop(jobs, head, setup):
    from ray.util.state import list_actors, list_placement_groups

    job_id = submit(
        jobs,
        f"python jobs/finetune.py --config {setup['one']} --dataset datasets/default/date "
        f"--base-model {setup['model']} --task-id date -p max_steps={LONG}",
    )
    # Progress lines ("... RUNNING step N/...") reach the job log while it trains.
    logs = wait_for(
        lambda: (text := jobs.get_job_logs(job_id)) and _step(text) >= 3 and text,
        180,
        "training progress in the job log",
    )
    run_id = logs.split(" registered")[0].split()[-1]
    assert run_id.startswith("ftjob-"), logs
    jobs.stop_job(job_id)
    status, logs = finish(jobs, job_id, timeout_s=60)
    assert status == "STOPPED", logs
    assert f"{run_id}: cancelling (signal 15)" in logs  # the job's own handler acted

    # The registry (asked through another job) records the run as cancelled, checkpoint kept.
    cmd = f"python -m llmvm_ray.train.cli show {run_id} --config {setup['one']}"
    run = wait_for(lambda: _cancelled(jobs, cmd), 60, "registry says CANCELLED")
    assert run["origin"] == "job" and run["checkpoint_path"]
    assert run["cancel_mode"] == "cooperative"  # stopped itself, well within the wait time
    assert Path(run["checkpoint_path"]).is_dir()

    # Nothing of the run is left on the cluster: workers, supervisor, placement group.
    pids = [w["pid"] for w in run["workers"]]
    assert pids
    wait_for(lambda: not any(_alive(p) for p in pids), 60, "worker processes gone")
    address = head.dashboard_url

    def released() -> bool:
        actors = list_actors(address=address, filters=[("state", "=", "ALIVE")], limit=1000)
        names = " ".join(f"{a.class_name} {a.name}" for a in actors)
        pgs = list_placement_groups(address=address, limit=1000)
        return (
            "RayTrainWorker" not in names
            and run["supervisor"] not in names
            and all(pg.state == "REMOVED" for pg in pgs)
        )

    wait_for(released, 60, "actors and placement groups released")


@pytest.mark.slow
def test_finetune_job_succeeds_and_exits_zero(jobs, setup):
    """A short run to completion: exit 0 (SUCCEEDED), the adapter in storage (~1 min)."""
    status, logs = finish(
        jobs,
        submit(
            jobs,
            f"python jobs/finetune.py --config {setup['one']} --dataset datasets/default/date "
            f"--base-model {setup['model']} --task-id date -p max_steps=4",
        ),
        timeout_s=300,
    )
    assert status == "SUCCEEDED", logs
    run = json.loads(logs[logs.rindex('{\n "id"') :].split("\n}\n")[0] + "\n}")
    assert run["status"] == "SUCCEEDED" and run["origin"] == "job"
    assert Path(run["output_path"]).is_dir()


def _cancelled(jobs, cmd: str) -> dict | None:
    status, logs = finish(jobs, submit(jobs, cmd), timeout_s=60)
    assert status == "SUCCEEDED", logs
    run = json.loads(logs[logs.index("{\n") :])
    if run["status"] == "CANCELLED":
        return run
    time.sleep(1)
    return None


def _step(logs: str) -> int:
    steps = re.findall(r" RUNNING step ([0-9]+)/", logs)
    return int(steps[-1]) if steps else 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# -- batch synthesis ----------------------------------------------------------------------
# The teacher is the loopback stub (a remote OpenAI-compatible API's stand-in, run by this
# test process): the synthesis tests cover a real model as teacher; here what is under test
# is the job on a cluster — worker actors, its output, `ray job stop` and resubmission.

SYNTH = {
    "seed_batch_size": 2,
    "seed_examples": 2,
    "request_retries": 1,
    "backoff_s": 0.01,
    "max_in_flight": 2,
    "worker_num_cpus": 0.05,
    "embedding_model": "",  # TOML has no null: empty turns semantic dedup off
    "encoding": "json",
    "stats_interval_s": 0.5,
}


def synth_files(root: Path, stub) -> tuple[Path, Path]:
    """A config naming the stub as teacher, and six seeds (JSONL)."""
    body = "\n".join(f"{k} = {json.dumps(v)}" for k, v in SYNTH.items())
    config = root / "synth.toml"
    config.write_text(
        f"storage_path = {json.dumps(str(root / 'store'))}\n"
        f'[teacher]\nbase_url = "{stub.url}"\nmodel = "stub"\n[synthesis]\n{body}\n'
    )
    seeds = root / "seeds.jsonl"
    seeds.write_text(
        "".join(
            json.dumps({"id": f"s{i}", "prompt": f"Seed question {i}?", "completion": f" {i}"})
            + "\n"
            for i in range(6)
        )
    )
    return config, seeds


def synth_command(config: Path, seeds: Path, out: Path, target: int) -> str:
    return (
        f"python jobs/synthesize.py --config {config} --seeds {seeds} --output {out} "
        f"--target {target} --workers 2"
    )


def unit_files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.glob("units/*/*.json"))}


def test_synthesis_job_writes_the_rows_with_provenance(jobs, tmp_path):
    import pyarrow.parquet as pq

    from tests.support.stub_teacher import StubTeacher

    out = tmp_path / "out"
    with StubTeacher(["fenced", "good"]) as stub:
        config, seeds = synth_files(tmp_path, stub)
        status, logs = finish(jobs, submit(jobs, synth_command(config, seeds, out, 8)))
    assert status == "SUCCEEDED", logs
    assert "[synth] task default: target reached: 8 kept" in logs

    rows = pq.read_table(out / "data.parquet").to_pylist()
    run_id = json.loads((out / "run.json").read_text())["run_id"]
    stats = json.loads((out / "stats.json").read_text())
    assert len(rows) == 8 == stats["tasks"]["default"]["kept"]
    assert len({r["prompt"] for r in rows}) == 8
    assert stats["totals"]["requests"] == len(stub.requests) == len(unit_files(out)) == 4
    teacher_examples = {(e["prompt"], e["completion"]) for i in range(4) for e in stub.examples(i)}
    for r in rows:
        assert (r["prompt"], r["completion"]) in teacher_examples
        assert (r["source"], r["run_id"], r["teacher"], r["task"], r["encoding"]) == (
            "synthesis",
            run_id,
            "stub",
            "default",
            "json",
        )
        assert r["completion_by"] == "synthesis" and r["template"].startswith("completion/")
        assert len(r["seed_ids"]) == 2 and set(r["seed_ids"]) <= {f"s{i}" for i in range(6)}
        assert 0 <= r["unit"] < 4 and r["attempt"] == 0 and r["created_at"] > 0


def test_synthesis_job_stopped_then_resubmitted_loses_and_duplicates_nothing(jobs, tmp_path):
    """`ray job stop` mid-run, then the same command again: the saved units are kept as they
    are (not asked again), the missing ones are asked, and the output is exactly the target."""
    import pyarrow.parquet as pq

    from tests.support.stub_teacher import StubTeacher

    out, target = tmp_path / "out", 40  # 20 requests of 2 examples, 2 in flight, 0.3 s each
    with StubTeacher(["slow"], slow_s=0.3) as stub:
        config, seeds = synth_files(tmp_path, stub)
        command = synth_command(config, seeds, out, target)
        job_id = submit(jobs, command)
        wait_for(lambda: len(unit_files(out)) >= 3, 120, "saved units")
        jobs.stop_job(job_id)
        status, logs = finish(jobs, job_id, timeout_s=60)
        assert status == "STOPPED", logs
        assert "[synth] received signal 15: stopping" in logs  # the job's own handler acted
        assert "submit the same command again to resume" in logs
        before = unit_files(out)
        stopped = json.loads((out / "stats.json").read_text())
        assert stopped["stopped"] and stopped["units_saved"] == len(before)
        asked_before = len(stub.requests)
        assert 3 <= len(before) < target // 2, "the job finished before it was stopped"
        assert not (out / "data.parquet").exists()

        status, logs = finish(jobs, submit(jobs, command))
        assert status == "SUCCEEDED", logs
        asked_again = len(stub.requests) - asked_before
    after = unit_files(out)
    assert all(after[name] == data for name, data in before.items())  # kept as saved
    assert asked_again == len(after) - len(before)  # only the missing units were asked
    rows = pq.read_table(out / "data.parquet").to_pylist()
    assert len(rows) == target and len({r["prompt"] for r in rows}) == target
    saved = {
        (row["prompt"], row["unit"]) for data in after.values() for row in json.loads(data)["rows"]
    }
    assert {(r["prompt"], r["unit"]) for r in rows} == saved  # every saved row, once
    assert {r["run_id"] for r in rows} == {json.loads((out / "run.json").read_text())["run_id"]}
