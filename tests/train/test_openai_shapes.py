"""OpenAI fine_tuning.jobs shapes: what the official client parses, and the create mapping."""

from __future__ import annotations

import pytest
from openai.types.fine_tuning import FineTuningJob

from llmvm_ray.config import Config
from llmvm_ray.errors import InvalidRequestError, NotFoundError
from llmvm_ray.registry.records import RunStatus
from llmvm_ray.train import openai_api
from tests.registry.test_registry import make_run


@pytest.mark.parametrize("status", list(RunStatus))
def test_every_status_parses_as_an_openai_job(status):
    run = make_run(metadata={"team": "x"}).model_copy(
        update={
            "status": status,
            "params": {"epochs": 2, "batch_size": 8, "lr": 1e-3},
            "finished_at": 2e9 if status.terminal else None,
            "output_path": "/a" if status == RunStatus.SUCCEEDED else None,
            "error": "boom" if status == RunStatus.FAILED else None,
        }
    )
    job = FineTuningJob.model_validate(openai_api.job_object(run))
    assert job.id == run.id and job.status == status.value.lower()
    assert job.hyperparameters.n_epochs == 2
    assert (job.fine_tuned_model is not None) == (status == RunStatus.SUCCEEDED)
    assert (job.error is not None) == (status == RunStatus.FAILED)


CONFIG = Config.model_validate(
    {"models": [{"name": "tiny", "model_uri": "x"}], "train": {"lr": 1e-3}}
)


def test_create_body_maps_to_service_arguments():
    kwargs = openai_api.create_kwargs(
        {
            "model": "tiny",
            "training_file": "datasets/acme/date",
            "hyperparameters": {"n_epochs": 3, "batch_size": "auto"},
            "method": {
                "type": "supervised",
                "supervised": {"hyperparameters": {"learning_rate_multiplier": 2}},
            },
            "seed": 7,
            "suffix": "v1",
            "llmvm": {"task_id": "date", "hyperparameters": {"num_workers": 2}},
        },
        CONFIG,
        tenant="acme",
    )
    assert kwargs["dataset"] == "datasets/acme/date" and kwargs["base_model"] == "tiny"
    assert kwargs["tenant"] == "acme" and kwargs["task_id"] == "date"
    assert kwargs["hyperparameters"] == {"epochs": 3, "lr": 2e-3, "seed": 7, "num_workers": 2}
    assert kwargs["metadata"] == {"suffix": "v1"}


OK = {"model": "tiny", "training_file": "datasets/t/d"}


def llmvm_hp(**hp):
    return {**OK, "llmvm": {"hyperparameters": hp}}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"training_file": "d"}, "model"),
        ({"model": "tiny"}, "training_file"),
        ({"model": "no-such", "training_file": "datasets/t/d"}, "model"),
        ({"model": "/etc/models/x", "training_file": "datasets/t/d"}, "model"),
        ({**OK, "validation_file": "v"}, "validation_file"),
        ({**OK, "method": {"type": "dpo"}}, "method"),
        (
            {**OK, "hyperparameters": {"learning_rate_multiplier": 0}},
            "hyperparameters.learning_rate_multiplier",
        ),
        (llmvm_hp(max_failures=50), "hyperparameters.max_failures"),
        (llmvm_hp(torch_extensions_dir="/tmp/x"), "hyperparameters.torch_extensions_dir"),
        (llmvm_hp(num_workers=500), "hyperparameters.num_workers"),
        (llmvm_hp(max_steps=10**9), "hyperparameters.max_steps"),
        (llmvm_hp(epochs=1000), "hyperparameters.epochs"),
        (llmvm_hp(max_seq_len=10**6), "hyperparameters.max_seq_len"),
        (llmvm_hp(resources_per_worker={"CPU": 64}), "hyperparameters.resources_per_worker"),
        (llmvm_hp(resources_per_worker={"GPU": 8}), "hyperparameters.resources_per_worker"),
        (llmvm_hp(resources_per_worker={"special": 1}), "hyperparameters.resources_per_worker"),
    ],
)
def test_bad_create_bodies(body, param):
    with pytest.raises(InvalidRequestError) as info:
        openai_api.create_kwargs(body, CONFIG, tenant="t")
    assert info.value.param == param


@pytest.mark.parametrize(
    "training_file",
    [
        "/etc/passwd",
        "~/data.parquet",
        "s3://other-bucket/datasets/t/d",
        "s3://b/d?endpoint_override=attacker.example:9000",
        "http://169.254.169.254/latest",
        "datasets/t/../u/d",
        "datasets/t//d",
        "datasets/other-tenant/d",
        "datasets/t/d?scheme=http",
        "datasets/t/C:\\x",
        "d",
    ],
)
def test_a_training_file_outside_the_tenants_area_is_refused_like_a_missing_one(training_file):
    with pytest.raises(InvalidRequestError) as info:
        openai_api.create_kwargs({**OK, "training_file": training_file}, CONFIG, tenant="t")
    missing = openai_api.not_your_dataset(training_file, "t")
    assert (info.value.param, info.value.message) == ("training_file", missing.message)


def test_the_operator_may_allow_any_base_model():
    config = CONFIG.model_copy(deep=True)
    config.train_limits.allow_any_base_model = True
    kwargs = openai_api.create_kwargs({**OK, "model": "org/some-model"}, config, "t")
    assert kwargs["base_model"] == "org/some-model"


class _FakeService:
    """Just enough of FinetuneService for the route helpers."""

    def __init__(self, run):
        self.run = run
        self.cancelled = []

    def get(self, job_id):
        if job_id != self.run.id:
            raise NotFoundError(f"no fine-tune {job_id!r}")
        return self.run

    def cancel(self, job_id):
        self.cancelled.append(job_id)
        return self.run

    def list(self, tenant=None, after=None, limit=None):
        return [self.run][:limit]


def test_route_helpers_scope_jobs_to_their_tenant():
    run = make_run(tenant="acme")
    service = _FakeService(run)
    assert openai_api.retrieve_job(service, run.id, "acme")["id"] == run.id
    with pytest.raises(NotFoundError):
        openai_api.retrieve_job(service, run.id, "someone-else")
    with pytest.raises(NotFoundError):
        openai_api.cancel_job(service, run.id, "someone-else")
    assert service.cancelled == []
    openai_api.cancel_job(service, run.id, "acme")
    assert service.cancelled == [run.id]
    page = openai_api.list_jobs(service, "acme", limit=1)
    assert page["object"] == "list" and page["has_more"] is False
    with pytest.raises(InvalidRequestError):
        openai_api.list_jobs(service, "acme", limit=0)


def test_a_tenant_with_its_fine_tunes_quota_in_use_gets_a_429():
    from llmvm_ray.errors import RateLimitError
    from llmvm_ray.registry.records import RunStatus

    config = CONFIG.model_copy(deep=True)
    config.quotas.max_active_finetunes = 1
    running = make_run(tenant="t").model_copy(update={"status": RunStatus.RUNNING})
    service = _FakeService(running)
    service.config = config
    with pytest.raises(RateLimitError) as info:
        openai_api.create_job(service, {**OK}, "t")
    assert info.value.status == 429 and info.value.retry_after_s == config.quotas.retry_after_s
