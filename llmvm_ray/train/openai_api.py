"""OpenAI ``fine_tuning.jobs`` shapes over ``FinetuneService``, for the HTTP layer.

Pure translation, no HTTP: the Serve ingress calls these from its routes
(``POST /v1/fine_tuning/jobs``, ``GET /v1/fine_tuning/jobs``, ``GET .../{id}``,
``POST .../{id}/cancel``) so that the official ``openai`` client's ``fine_tuning.jobs.create /
list / retrieve / cancel`` work. Where OpenAI has no field for something we know (task id,
progress, metrics, checkpoint and adapter paths), it rides along under ``"llmvm"``; the
client keeps unknown fields.

Mapping: ``training_file`` is a dataset path inside the caller's own area of
``storage_path`` (``datasets/<tenant>/...``); ``model`` a configured base model;
``hyperparameters.n_epochs / batch_size / learning_rate_multiplier`` map to ``epochs /
batch_size / lr``; ``train.*`` fields may be given under ``llmvm.hyperparameters``, within
``train_limits`` and except the operator's own (``OPERATOR_ONLY``); ``llmvm.task_id`` /
``llmvm.context`` tag the run.

What a client names is confined, because the server acts on it: a ``training_file`` that is
an absolute path, a URI (another bucket, ``endpoint_override`` and other query options that
make ``pyarrow.fs`` connect to a host), ``~`` or ``..`` is refused with the same message as a
dataset that does not exist, so the answer tells nothing about what exists elsewhere.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from llmvm_ray.config import Config, TrainLimitsConfig
from llmvm_ray.errors import InvalidRequestError, NotFoundError, RateLimitError
from llmvm_ray.registry.records import FinetuneRun, RunStatus

# train.* fields only the operator sets: retries, disk kept, process and compiler settings.
OPERATOR_ONLY = frozenset(
    {
        "max_failures",
        "checkpoints_to_keep",
        "cancel_grace_s",
        "health_check_interval_s",
        "torch_extensions_dir",
    }
)

_STATUS = {
    RunStatus.QUEUED: "queued",
    RunStatus.RUNNING: "running",
    RunStatus.SUCCEEDED: "succeeded",
    RunStatus.FAILED: "failed",
    RunStatus.CANCELLED: "cancelled",
}


def tenant_dataset(training_file: str, tenant: str) -> str:
    """The storage path ``training_file`` names inside ``tenant``'s own area, or the one
    refusal for anything else (see the module docstring)."""
    area = f"datasets/{tenant}/"
    parts = training_file.split("/")
    confined = (
        training_file.startswith(area)
        and not any(p in ("", ".", "..") for p in parts)
        and not any(c in training_file for c in ("\\", ":", "?", "#", "~", "\x00"))
    )
    if not confined:
        raise not_your_dataset(training_file, tenant)
    return training_file


def not_your_dataset(training_file: str, tenant: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"training_file {training_file[:200]!r} is not one of your datasets (a path under "
        f"datasets/{tenant}/ of the service's storage)",
        param="training_file",
    )


def check_hyperparameters(params: Mapping[str, Any], limits: TrainLimitsConfig) -> None:
    """Refuse the operator's own fields and values beyond ``train_limits`` (types and the
    rest are ``TrainConfig``'s checks)."""
    for key in params:
        if key in OPERATOR_ONLY:
            raise InvalidRequestError(
                f"hyperparameters.{key} is set by the operator", param=f"hyperparameters.{key}"
            )
    bounds = {
        "num_workers": limits.max_num_workers,
        "max_steps": limits.max_steps,
        "epochs": limits.max_epochs,
        "max_seq_len": limits.max_seq_len,
    }
    for key, most in bounds.items():
        value = params.get(key)
        if isinstance(value, int | float) and value > most:
            raise InvalidRequestError(
                f"hyperparameters.{key} may be at most {most:g}", param=f"hyperparameters.{key}"
            )
    resources = params.get("resources_per_worker")
    if isinstance(resources, Mapping):
        most = {"CPU": limits.max_cpus_per_worker, "GPU": limits.max_gpus_per_worker}
        for name, amount in resources.items():
            if name not in most or not isinstance(amount, int | float) or amount > most[name]:
                raise InvalidRequestError(
                    f"resources_per_worker: CPU at most {most['CPU']:g} and GPU at most "
                    f"{most['GPU']:g} per worker",
                    param="hyperparameters.resources_per_worker",
                )


def create_kwargs(body: Mapping[str, Any], config: Config, tenant: str) -> dict[str, Any]:
    """``FinetuneService.create`` keyword arguments for an OpenAI create-job body."""
    for key in ("model", "training_file"):
        if not isinstance(body.get(key), str) or not body[key]:
            raise InvalidRequestError(f"'{key}' is required", param=key)
    limits = config.train_limits
    if not limits.allow_any_base_model and body["model"] not in {m.name for m in config.models}:
        raise InvalidRequestError(
            f"model {body['model'][:200]!r} is not one of the served base models", param="model"
        )
    default_lr = config.train.lr
    if body.get("validation_file"):
        raise InvalidRequestError(
            "validation_file is not supported: a held-out share of training_file is "
            "evaluated instead (hyperparameter eval_fraction)",
            param="validation_file",
        )
    method = body.get("method") or {}
    if method and method.get("type", "supervised") != "supervised":
        raise InvalidRequestError("only supervised fine-tuning is supported", param="method")
    openai_hp = dict(body.get("hyperparameters") or {})
    openai_hp.update(((method.get("supervised") or {}).get("hyperparameters")) or {})
    extension = body.get("llmvm") or {}
    params: dict[str, Any] = {}
    for ours, theirs in (("epochs", "n_epochs"), ("batch_size", "batch_size")):
        value = openai_hp.get(theirs)
        if value is not None and value != "auto":
            params[ours] = value
    multiplier = openai_hp.get("learning_rate_multiplier")
    if multiplier is not None and multiplier != "auto":
        if not isinstance(multiplier, int | float) or multiplier <= 0:
            raise InvalidRequestError(
                "learning_rate_multiplier must be a positive number",
                param="hyperparameters.learning_rate_multiplier",
            )
        params["lr"] = default_lr * multiplier
    if body.get("seed") is not None:
        params["seed"] = body["seed"]
    params.update(extension.get("hyperparameters") or {})
    check_hyperparameters(params, limits)
    metadata = {str(k): str(v) for k, v in (body.get("metadata") or {}).items()}
    if body.get("suffix"):
        metadata["suffix"] = str(body["suffix"])
    return {
        "dataset": tenant_dataset(body["training_file"], tenant),
        "base_model": body["model"],
        "tenant": tenant,
        "task_id": extension.get("task_id"),
        "context": extension.get("context"),
        "hyperparameters": params,
        "metadata": metadata,
        "origin": "api",
    }


def job_object(run: FinetuneRun) -> dict[str, Any]:
    """A run as an OpenAI ``fine_tuning.job`` object."""
    p = run.params
    progress = run.progress
    estimated_finish = None
    if run.status == RunStatus.RUNNING and progress.eta_s is not None:
        estimated_finish = int(time.time() + progress.eta_s)
    error = None
    if run.status == RunStatus.FAILED:
        error = {"code": "training_failed", "message": run.error or "failed", "param": None}
    hyperparameters = {
        "n_epochs": p.get("epochs"),
        "batch_size": p.get("batch_size"),
        "learning_rate_multiplier": None,
    }
    return {
        "id": run.id,
        "object": "fine_tuning.job",
        "created_at": int(run.created_at),
        "finished_at": int(run.finished_at) if run.finished_at else None,
        "model": run.base_model,
        "fine_tuned_model": fine_tuned_model_name(run),
        "organization_id": run.tenant,
        "result_files": [],
        "status": _STATUS[run.status],
        "seed": run.seed,
        "training_file": run.dataset.source,
        "validation_file": None,
        "trained_tokens": None,
        "estimated_finish": estimated_finish,
        "error": error,
        "hyperparameters": hyperparameters,
        "method": {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
        "metadata": run.metadata or None,
        "llmvm": {
            "task_id": run.task_id,
            "progress": progress.model_dump(),
            "metrics": run.metrics,
            "checkpoint_path": run.checkpoint_path,
            "output_path": run.output_path,
            "output_format": run.output_format,
            "cancel_mode": run.cancel_mode,
            "cancelling": run.cancel_requested_at is not None and not run.status.terminal,
            "queue_reason": run.queue_reason,
            "hyperparameters": p,
        },
    }


def fine_tuned_model_name(run: FinetuneRun) -> str | None:
    """``base:run-id`` (the ``model:adapter`` form Serve addresses adapters by), once done."""
    if run.status != RunStatus.SUCCEEDED or not run.output_path:
        return None
    return f"{run.base_model}:{run.id}"


def list_object(runs: list[FinetuneRun], has_more: bool) -> dict[str, Any]:
    return {"object": "list", "data": [job_object(r) for r in runs], "has_more": has_more}


def list_jobs(
    service: Any, tenant: str | None, after: str | None = None, limit: int = 20
) -> dict[str, Any]:
    """``GET /v1/fine_tuning/jobs``: newest first, ``after`` a job id, ``limit`` 1-100."""
    if not 1 <= limit <= 100:
        raise InvalidRequestError("limit must be between 1 and 100", param="limit")
    runs = service.list(tenant=tenant, after=after, limit=limit + 1)
    return list_object(runs[:limit], has_more=len(runs) > limit)


# -- one call per route (blocking: call them from a thread, e.g. ``asyncio.to_thread``) --------


def create_job(service: Any, body: Mapping[str, Any], tenant: str) -> dict[str, Any]:
    """``POST /v1/fine_tuning/jobs``."""
    kwargs = create_kwargs(body, service.config, tenant)
    quota = service.config.quotas
    active = [r for r in service.list(tenant=tenant) if not r.status.terminal and r.origin == "api"]
    if len(active) >= quota.max_active_finetunes:
        raise RateLimitError(
            f"this tenant has {len(active)} fine-tunes queued or running "
            f"(quotas.max_active_finetunes {quota.max_active_finetunes})",
            retry_after_s=quota.retry_after_s,
        )
    try:
        run = service.create(**kwargs)
    except InvalidRequestError as exc:
        if exc.param == "dataset":  # missing or empty: the same answer as not allowed
            raise not_your_dataset(body["training_file"], tenant) from None
        raise
    return job_object(run)


def retrieve_job(service: Any, job_id: str, tenant: str | None) -> dict[str, Any]:
    """``GET /v1/fine_tuning/jobs/{id}``; another tenant's job is not found."""
    return job_object(_own(service, job_id, tenant))


def cancel_job(service: Any, job_id: str, tenant: str | None) -> dict[str, Any]:
    """``POST /v1/fine_tuning/jobs/{id}/cancel``: 409 if finished or already cancelling."""
    _own(service, job_id, tenant)
    return job_object(service.cancel(job_id))


def _own(service: Any, job_id: str, tenant: str | None) -> FinetuneRun:
    run = service.get(job_id)
    if tenant is not None and run.tenant != tenant:
        raise NotFoundError(f"no fine-tune {job_id!r}", param="id")
    return run
