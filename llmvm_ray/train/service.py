"""The fine-tune API every surface uses (HTTP routes, ``llmvm finetune``, ``jobs/finetune.py``).

``create`` validates everything it can up front (dataset, base model, parameters, whether
the cluster could ever fit the run) so bad input is a clear 4xx at once, not a FAILED run a
minute later; it then freezes the dataset, registers the run as QUEUED and hands it to a
supervisor actor, and returns immediately. Nothing here blocks on training except ``wait``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from llmvm_ray.config import Config, TrainConfig
from llmvm_ray.errors import InvalidRequestError, NotFoundError
from llmvm_ray.registry.client import RegistryClient, get_registry
from llmvm_ray.registry.records import DatasetInfo, FinetuneRun, RunStatus, new_run_id
from llmvm_ray.store import datasets
from llmvm_ray.store.fs import Storage, safe_component
from llmvm_ray.train.spec import RunSpec, run_dir

ORIGINS = ("api", "cli", "job")


class FinetuneService:
    """Create, list, get, cancel and wait for fine-tunes. Needs a connected Ray.

    Runs created with ``detached=False`` belong to this process: their supervisor dies with
    it (a foreground ``--wait`` or a Ray job), and this object keeps their handles alive.
    """

    def __init__(self, config: Config) -> None:
        self._config = config
        self._storage = Storage.from_uri(config.storage_path)
        self._registry: RegistryClient | None = None
        self._owned: dict[str, Any] = {}  # run id -> supervisor handle (non-detached runs)

    @property
    def config(self) -> Config:
        return self._config

    @property
    def registry(self) -> RegistryClient:
        if self._registry is None:
            self._registry = get_registry(self._config)
        return self._registry

    # -- create ------------------------------------------------------------------------------

    def create(
        self,
        *,
        dataset: str,
        base_model: str,
        tenant: str = "default",
        task_id: str | None = None,
        context: str | None = None,
        hyperparameters: Mapping[str, Any] | None = None,
        metadata: Mapping[str, str] | None = None,
        origin: str = "api",
        detached: bool = True,
    ) -> FinetuneRun:
        """Validate, register (QUEUED) and launch a fine-tune; return its record at once.

        ``dataset`` is a Parquet file or folder of parts, relative to ``storage_path`` or
        absolute; ``base_model`` a configured model name, a local folder or a hub id;
        ``hyperparameters`` override ``config.train`` field by field.
        """
        params = self._params(hyperparameters)
        _check_ids(tenant, task_id)
        if origin not in ORIGINS:
            raise InvalidRequestError(f"origin must be one of {ORIGINS}", param="origin")
        base_model_path = resolve_base_model(self._config, base_model)
        run_id = new_run_id()
        spec = RunSpec(
            run_id=run_id,
            storage_path=self._config.storage_path,
            data_uri=self._storage.uri(run_dir(run_id), "data.parquet"),
            base_model_path=base_model_path,
            params=params,
            namespace=self._config.ray.namespace,
            registry_name=self._config.registry.actor_name,
            ray_address=_gcs_address(),
        )
        self._check_fits(spec)
        snapshot = self._snapshot(dataset, spec)
        run = FinetuneRun(
            id=run_id,
            tenant=tenant,
            task_id=task_id,
            base_model=base_model,
            base_model_path=base_model_path,
            context=context,
            dataset=DatasetInfo(
                uri=snapshot.uri,
                rows=snapshot.rows,
                content_hash=snapshot.content_hash,
                source=dataset,
            ),
            params=params.model_dump(mode="json"),
            seed=params.seed,
            origin=origin,
            metadata=dict(metadata or {}),
        )
        import ray

        registry = self.registry
        registry.create(run)
        try:
            supervisor = self._launch(spec, detached)
            registry.attach(run_id, spec.supervisor)
            if not detached:
                self._owned[run_id] = supervisor
            # Waited for: the run is under way in its supervisor before this returns,
            # whatever the caller does next (a CLI exits at once).
            ray.get(supervisor.start.remote(), timeout=self._config.train_queue.start_timeout_s)
        except Exception as exc:
            registry.finish(run_id, "FAILED", {"error": f"could not start its supervisor: {exc}"})
            raise
        return registry.get(run_id)

    def _params(self, overrides: Mapping[str, Any] | None) -> TrainConfig:
        data = self._config.train.model_dump()
        for key, value in (overrides or {}).items():
            if key not in TrainConfig.model_fields:
                raise InvalidRequestError(
                    f"unknown hyperparameter {key!r}", param=f"hyperparameters.{key}"
                )
            data[key] = value
        try:
            return TrainConfig.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(x) for x in err["loc"])
            raise InvalidRequestError(
                f"hyperparameters.{loc}: {err['msg']}", param=f"hyperparameters.{loc}"
            ) from None

    def _check_fits(self, spec: RunSpec) -> None:
        """Refuse a run that could never be placed on this cluster (it would queue forever)."""
        import ray

        if not self._config.train_queue.reject_impossible:
            return
        total = ray.cluster_resources()
        per_worker = spec.resources_per_worker()
        short = {k: v for k, v in spec.total_resources().items() if total.get(k, 0.0) + 1e-9 < v}
        if short:
            wanted = ", ".join(f"{k} {v:g}" for k, v in short.items())
            have = ", ".join(f"{k} {total.get(k, 0.0):g}" for k in short)
            raise InvalidRequestError(
                f"{spec.params.num_workers} worker(s) x {per_worker} need {wanted}; "
                f"the whole cluster has {have}",
                param="hyperparameters.num_workers",
            )

    def _snapshot(self, dataset: str, spec: RunSpec) -> datasets.DatasetRef:
        try:
            return datasets.snapshot(self._storage, dataset, spec.data_uri)
        except NotFoundError as exc:
            raise InvalidRequestError(exc.message, param="dataset") from None

    def _launch(self, spec: RunSpec, detached: bool) -> Any:
        import ray

        from llmvm_ray.train.supervisor import RunSupervisor

        options: dict[str, Any] = {
            "name": spec.supervisor,
            "namespace": spec.namespace,
            "num_cpus": 0,
            "max_restarts": 0,  # a lost supervisor is reconciled to FAILED, never re-run
            "max_concurrency": 16,
            "runtime_env": {"env_vars": spec.env_vars()},
        }
        if detached:
            options["lifetime"] = "detached"
        return (
            ray.remote(RunSupervisor)
            .options(**options)
            .remote(spec, self.registry.handle, self._config.train_queue)
        )

    # -- queries -----------------------------------------------------------------------------

    def get(self, run_id: str) -> FinetuneRun:
        return self.registry.get(run_id)

    def list(
        self,
        *,
        tenant: str | None = None,
        task_id: str | None = None,
        status: str | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> list[FinetuneRun]:
        if status is not None and status.upper() not in {s.value for s in RunStatus}:
            raise InvalidRequestError(f"unknown status {status!r}", param="status")
        return self.registry.list(tenant, task_id, status, limit, after)

    def latest_adapter(self, task_id: str, tenant: str | None = None) -> FinetuneRun | None:
        """The newest SUCCEEDED run of a task (its ``output_path`` is what to serve)."""
        return self.registry.latest_successful(task_id, tenant)

    # -- cancel / wait -----------------------------------------------------------------------

    def cancel(self, run_id: str) -> FinetuneRun:
        """Ask a run to stop; returns at once (``wait`` for CANCELLED).

        ``NotFoundError`` for an unknown id; ``ConflictError`` if it already finished or a
        cancel is already under way.
        """
        import ray

        run = self.registry.request_cancel(run_id)
        if run.supervisor is not None:
            try:
                supervisor = ray.get_actor(run.supervisor, namespace=self._config.ray.namespace)
            except ValueError:
                self.registry.reconcile()  # its supervisor is gone: settle the run now
            else:
                supervisor.cancel.remote()  # fast path; it also sees the registry's flag
        return self.registry.get(run_id)

    def wait(
        self,
        run_id: str,
        timeout_s: float | None = None,
        poll_s: float = 0.5,
        on_update: Callable[[FinetuneRun], None] | None = None,
    ) -> FinetuneRun:
        """Block until the run is terminal (``TimeoutError`` after ``timeout_s``)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            run = self.registry.get(run_id)
            if on_update is not None:
                on_update(run)
            if run.status.terminal:
                self._owned.pop(run_id, None)
                return run
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"fine-tune {run_id} still {run.status} after {timeout_s}s")
            time.sleep(poll_s)


def resolve_base_model(config: Config, base_model: str) -> str:
    """The folder or hub id to load for ``base_model``; ``InvalidRequestError`` if unknown.

    Accepts a model name from ``config.models``, a local folder with a ``config.json``, or
    a hub id that is already in the local Hugging Face cache (nothing is downloaded).
    """
    uri = base_model
    for model in config.models:
        if model.name == base_model:
            uri = model.model_uri
    path = Path(uri).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise InvalidRequestError(f"base model folder {uri} has no config.json", param="model")
        return str(path.resolve())
    if uri.startswith(("/", ".", "~")) or uri.count("/") > 1:
        raise InvalidRequestError(f"base model folder {uri} not found", param="model")
    try:
        from transformers import AutoConfig

        AutoConfig.from_pretrained(uri)
    except Exception:  # noqa: BLE001 - any failure means we can't load it
        raise InvalidRequestError(
            f"unknown base model {base_model!r}: not a configured model, a local folder, "
            "or a hub id in the local cache",
            param="model",
        ) from None
    return uri


def _check_ids(tenant: str, task_id: str | None) -> None:
    try:
        safe_component(tenant, "tenant")
        if task_id is not None:
            safe_component(task_id, "task id")
    except ValueError as exc:
        param = "tenant" if str(exc).startswith("tenant") else "task_id"
        raise InvalidRequestError(str(exc), param=param) from None


def _gcs_address() -> str | None:
    import ray

    return ray.get_runtime_context().gcs_address if ray.is_initialized() else None
