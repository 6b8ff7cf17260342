"""Fine-tunes over HTTP with the official client's ``fine_tuning.jobs`` calls."""

from __future__ import annotations

import time

import openai
import pytest

pytestmark = pytest.mark.ray

DATASET = "datasets/http/date.parquet"


@pytest.fixture(scope="module")
def dataset(service):
    from llmvm_ray.dev.tasks import get_task, make_examples
    from llmvm_ray.store import datasets
    from llmvm_ray.store.fs import Storage

    _, config = service
    rows = make_examples(get_task("date"), 64, seed=0, instruction=False)
    datasets.write_examples(Storage.from_uri(config.storage_path), DATASET, rows)
    return DATASET


def test_create_list_retrieve_cancel(client, dataset):
    job = client.fine_tuning.jobs.create(
        model="tiny",
        training_file=dataset,
        extra_body={
            "llmvm": {
                "hyperparameters": {
                    "max_steps": 10_000,
                    "resources_per_worker": {"CPU": 0.5},
                    "progress_interval_s": 0.2,
                }
            }
        },
    )
    assert job.object == "fine_tuning.job" and job.status in ("queued", "running")
    assert job.id in {j.id for j in client.fine_tuning.jobs.list().data}

    deadline = time.monotonic() + 180
    while client.fine_tuning.jobs.retrieve(job.id).status != "running":
        assert time.monotonic() < deadline, "the run never started"
        time.sleep(0.5)
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.id == job.id
    while (status := client.fine_tuning.jobs.retrieve(job.id).status) != "cancelled":
        assert status in ("running", "queued"), status
        assert time.monotonic() < deadline, "the run never stopped"
        time.sleep(0.5)
    with pytest.raises(openai.ConflictError):
        client.fine_tuning.jobs.cancel(job.id)


def test_bad_fine_tune_requests(client, dataset):
    with pytest.raises(openai.APIStatusError) as missing:
        client.fine_tuning.jobs.create(model="tiny", training_file="datasets/nope.parquet")
    assert missing.value.status_code in (400, 404) and "not found" in missing.value.message
    with pytest.raises(openai.BadRequestError) as info:
        client.fine_tuning.jobs.create(model="no-such-model", training_file=dataset)
    assert info.value.param in ("model", "base_model")
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.create(
            model="tiny", training_file=dataset, hyperparameters={"n_epochs": -1}
        )
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ft-does-not-exist")
