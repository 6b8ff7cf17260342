"""OpenAI ``fine_tuning.jobs`` shapes over ``FinetuneService``, for the HTTP layer.

Pure translation, no HTTP: the Serve ingress calls these from its routes
(``POST /v1/fine_tuning/jobs``, ``GET /v1/fine_tuning/jobs``, ``GET .../{id}``,
``POST .../{id}/cancel``) so that the official ``openai`` client's ``fine_tuning.jobs.create /
list / retrieve / cancel`` work. Where OpenAI has no field for something we know (task id,
progress, metrics, checkpoint and adapter paths), it rides along under ``"llmvm"``; the
client keeps unknown fields.

Mapping: ``training_file`` is a dataset path under ``storage_path`` (or absolute);
``model`` a base model; ``hyperparameters.n_epochs / batch_size /
learning_rate_multiplier`` map to ``epochs / batch_size / lr``; any ``train.*`` field may be
given under ``llmvm.hyperparameters``; ``llmvm.task_id`` / ``llmvm.context`` tag the run.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from llmvm_ray.errors import InvalidRequestError, NotFoundError
from llmvm_ray.registry.records import FinetuneRun, RunStatus

_STATUS = {
    RunStatus.QUEUED: "queued",
    RunStatus.RUNNING: "running",
    RunStatus.SUCCEEDED: "succeeded",
    RunStatus.FAILED: "failed",
    RunStatus.CANCELLED: "cancelled",
}


def create_kwargs(body: Mapping[str, Any], default_lr: float, tenant: str) -> dict[str, Any]:
    """``FinetuneService.create`` keyword arguments for an OpenAI create-job body."""
    for key in ("model", "training_file"):
        if not isinstance(body.get(key), str) or not body[key]:
            raise InvalidRequestError(f"'{key}' is required", param=key)
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
    metadata = {str(k): str(v) for k, v in (body.get("metadata") or {}).items()}
    if body.get("suffix"):
        metadata["suffix"] = str(body["suffix"])
    return {
        "dataset": body["training_file"],
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


def create_job(
    service: Any, body: Mapping[str, Any], tenant: str, default_lr: float
) -> dict[str, Any]:
    """``POST /v1/fine_tuning/jobs``."""
    return job_object(service.create(**create_kwargs(body, default_lr, tenant)))


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
