"""Fine-tunes over HTTP with the official client's ``fine_tuning.jobs`` calls."""

from __future__ import annotations

import time

import openai
import pytest

from llmvm_ray.optimizer.task import tenant_of
from tests.conftest import API_KEY

pytestmark = pytest.mark.ray

# The caller's own area: datasets/<its tenant>/ (see train/openai_api.py).
DATASET = f"datasets/{tenant_of(API_KEY)}/date.parquet"
OTHERS = "datasets/someone-else/date.parquet"


@pytest.fixture(scope="module")
def dataset(service):
    from llmvm_ray.dev.tasks import get_task, make_examples
    from llmvm_ray.store import datasets
    from llmvm_ray.store.fs import Storage

    _, config = service
    rows = make_examples(get_task("date"), 64, seed=0, instruction=False)
    storage = Storage.from_uri(config.storage_path)
    datasets.write_examples(storage, DATASET, rows)
    datasets.write_examples(storage, OTHERS, rows)
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
    # Missing, another tenant's, or a URI that would make the server connect somewhere:
    # one answer for all, so it tells nothing about what exists.
    answers = set()
    for training_file in (
        DATASET.replace("date", "nope"),
        OTHERS,
        "s3://bucket/x?endpoint_override=127.0.0.1:9&scheme=http",
        "/etc/passwd",
    ):
        with pytest.raises(openai.BadRequestError) as refused:
            client.fine_tuning.jobs.create(model="tiny", training_file=training_file)
        assert refused.value.body["param"] == "training_file"
        answers.add(refused.value.message.replace(training_file[:200], "<file>"))
    assert len(answers) == 1, answers
    with pytest.raises(openai.BadRequestError) as info:
        client.fine_tuning.jobs.create(model="no-such-model", training_file=dataset)
    assert info.value.param in ("model", "base_model")
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.create(
            model="tiny", training_file=dataset, hyperparameters={"n_epochs": -1}
        )
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ft-does-not-exist")
