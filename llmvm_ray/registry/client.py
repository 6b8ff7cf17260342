"""Reaching the registry from anywhere in the cluster: get-or-create, then typed calls.

``get_registry(config)`` returns a ``RegistryClient`` whose methods are plain blocking calls
that raise the registry's own typed errors (``NotFoundError``, ``ConflictError``), not Ray's
wrappers, so the HTTP layer and the CLI can map them to statuses directly.
"""

from __future__ import annotations

from typing import Any

from llmvm_ray.config import Config
from llmvm_ray.errors import ConfigError, LLMVMError
from llmvm_ray.registry.actor import RegistryActor
from llmvm_ray.registry.records import FinetuneRun
from llmvm_ray.store.fs import Storage

# Ray's built-in resource every head node has; a sliver of it pins the actor there, next to
# a local ``storage_path`` (Ray Train's placement-group cleaner does the same).
_HEAD_NODE_RESOURCE = "node:__internal_head__"


class RegistryClient:
    """Blocking, typed wrapper around the registry actor's handle."""

    def __init__(self, handle: Any, timeout_s: float = 60.0) -> None:
        self.handle = handle
        self._timeout_s = timeout_s

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        import ray

        ref = getattr(self.handle, method).remote(*args, **kwargs)
        try:
            return ray.get(ref, timeout=self._timeout_s)
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, LLMVMError):
                raise exc.cause from None
            raise

    def info(self) -> dict[str, Any]:
        return self._call("info")

    def get(self, run_id: str) -> FinetuneRun:
        return self._call("get", run_id)

    def list(
        self,
        tenant: str | None = None,
        task_id: str | None = None,
        status: str | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> list[FinetuneRun]:
        return self._call("list", tenant, task_id, status, limit, after)

    def latest_successful(self, task_id: str, tenant: str | None = None) -> FinetuneRun | None:
        return self._call("latest_successful", task_id, tenant)

    def create(self, run: FinetuneRun) -> FinetuneRun:
        return self._call("create", run)

    def attach(self, run_id: str, supervisor: str) -> FinetuneRun:
        return self._call("attach", run_id, supervisor)

    def try_start(self, run_id: str, max_concurrent: int) -> bool:
        return self._call("try_start", run_id, max_concurrent)

    def update(self, run_id: str, fields: dict[str, Any]) -> FinetuneRun:
        return self._call("update", run_id, fields)

    def finish(self, run_id: str, status: str, fields: dict[str, Any] | None = None) -> FinetuneRun:
        return self._call("finish", run_id, status, fields)

    def annotate(self, run_id: str, annotations: dict[str, Any]) -> FinetuneRun:
        return self._call("annotate", run_id, annotations)

    def request_cancel(self, run_id: str) -> FinetuneRun:
        return self._call("request_cancel", run_id)

    def reconcile(self) -> list[str]:
        return self._call("reconcile")


def get_registry(config: Config) -> RegistryClient:
    """The cluster's registry actor, created (detached, restartable) if it does not exist.

    Needs a connected Ray. Raises ``ConfigError`` if a registry of that name already runs
    on a different ``storage_path``: two stores under one name would split the records.
    """
    import ray

    actor_cls = ray.remote(RegistryActor)
    handle = actor_cls.options(
        name=config.registry.actor_name,
        namespace=config.ray.namespace,
        lifetime="detached",
        get_if_exists=True,
        max_restarts=-1,
        max_task_retries=-1,
        max_concurrency=16,
        num_cpus=0,
        resources={_HEAD_NODE_RESOURCE: 0.001},
    ).remote(
        config.storage_path,
        config.ray.namespace,
        config.registry.reconcile_interval_s,
        config.registry.attach_timeout_s,
        config.registry.orphan_cleanup_delay_s,
    )
    client = RegistryClient(handle)
    expected = Storage.from_uri(config.storage_path).uri()
    actual = client.info()["storage_uri"]
    if actual != expected:
        raise ConfigError(
            f"registry actor {config.registry.actor_name!r} stores under {actual}, "
            f"not this config's storage_path {expected}; use another registry.actor_name"
        )
    return client
