"""The registry actor: the one writer of fine-tune records, named and detached.

Why an actor: runs are changed from many places (supervisors pushing progress, the API
cancelling, the CLI listing) and the legal status moves (QUEUED → RUNNING → terminal, one
cancel per run, FIFO starts) must be decided in one place, in order. Every change is written
to the durable store before the call returns, so killing the actor (or the whole cluster)
loses nothing; ``max_restarts=-1`` brings it back and it reloads the store.

Why reconciling: a run is driven by a supervisor actor. If that actor dies (crash, kill,
``ray stop``), nobody would ever finish the record. On start and every
``reconcile_interval_s`` the registry marks such runs FAILED (or CANCELLED if a cancel had
been asked for), so no run stays RUNNING forever.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from llmvm_ray.errors import ConflictError, InvalidRequestError, NotFoundError
from llmvm_ray.observability.metrics import FinetuneMetrics
from llmvm_ray.registry.records import TERMINAL, TRANSITIONS, FinetuneRun, RunStatus
from llmvm_ray.registry.store import RunStore
from llmvm_ray.store.fs import Storage

logger = logging.getLogger(__name__)

# Fields a supervisor may patch while a run is live (status moves have their own methods).
_PATCHABLE = frozenset(
    {
        "progress",
        "workers",
        "placement_group_id",
        "checkpoint_path",
        "checkpoint_step",
        "queue_reason",
        "metrics",
        "output_path",
        "output_format",
    }
)


class RegistryActor:
    """Fine-tune records in memory, mirrored to ``RunStore`` on every change.

    Run as a threaded actor (``max_concurrency`` > 1); a lock orders the mutations.
    """

    def __init__(
        self,
        storage_path: str,
        namespace: str,
        reconcile_interval_s: float = 5.0,
        attach_timeout_s: float = 60.0,
        orphan_cleanup_delay_s: float = 10.0,
    ) -> None:
        self._storage_uri = Storage.from_uri(storage_path).uri()
        self._store = RunStore(Storage.from_uri(storage_path))
        self._namespace = namespace
        self._attach_timeout_s = attach_timeout_s
        self._orphan_delay_s = orphan_cleanup_delay_s
        self._orphans: dict[str, float] = {}  # placement group id -> when to remove it
        self._lock = threading.RLock()
        self._runs = self._store.load_all()
        self._metrics = FinetuneMetrics(_actor_name())
        self._count_states()
        self._stop = threading.Event()
        self.reconcile()
        if reconcile_interval_s > 0:  # 0: no background pass (plain-object unit tests)
            threading.Thread(
                target=self._reconcile_loop, args=(reconcile_interval_s,), daemon=True
            ).start()
        logger.info("registry up: %d runs from %s", len(self._runs), self._store.uri)

    # -- introspection -----------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """Where the registry stores, its process id (for tests and ops), how many runs."""
        return {"storage_uri": self._storage_uri, "pid": os.getpid(), "runs": len(self._runs)}

    # -- queries -----------------------------------------------------------------------------

    def get(self, run_id: str) -> FinetuneRun:
        with self._lock:
            return self._get(run_id)

    def list(
        self,
        tenant: str | None = None,
        task_id: str | None = None,
        status: str | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> list[FinetuneRun]:
        """Runs matching every given filter, newest first; ``after`` pages past that run id."""
        wanted = RunStatus(status.upper()) if status else None
        with self._lock:
            runs = sorted(self._runs.values(), key=lambda r: (r.created_at, r.id), reverse=True)
        runs = [
            r
            for r in runs
            if (tenant is None or r.tenant == tenant)
            and (task_id is None or r.task_id == task_id)
            and (wanted is None or r.status == wanted)
        ]
        if after is not None:
            ids = [r.id for r in runs]
            if after not in ids:
                raise NotFoundError(f"no fine-tune {after!r} to page after", param="after")
            runs = runs[ids.index(after) + 1 :]
        return runs[:limit] if limit is not None else runs

    def latest_successful(self, task_id: str, tenant: str | None = None) -> FinetuneRun | None:
        """The most recently finished SUCCEEDED run of a task (what a student should serve)."""
        done = [
            r
            for r in self.list(tenant=tenant, task_id=task_id, status=RunStatus.SUCCEEDED)
            if r.output_path
        ]
        return max(done, key=lambda r: r.finished_at or 0.0, default=None)

    # -- changes -----------------------------------------------------------------------------

    def create(self, run: FinetuneRun) -> FinetuneRun:
        """Register a new QUEUED run. Idempotent: Ray retries a call the actor's restart
        interrupted, and the same record again is the same run, not a conflict."""
        with self._lock:
            stored = self._runs.get(run.id)
            if stored is not None:
                if stored.model_copy(update={"updated_at": run.updated_at}) == run:
                    return stored
                raise ConflictError(f"fine-tune {run.id} already exists", param="id")
            if run.status != RunStatus.QUEUED:
                raise InvalidRequestError("a new run must be QUEUED", param="status")
            return self._save(run)

    def attach(self, run_id: str, supervisor: str) -> FinetuneRun:
        """Record the named actor that drives the run (so reconciling can find it)."""
        with self._lock:
            run = self._get(run_id)
            return self._save(run.model_copy(update={"supervisor": supervisor}))

    def try_start(self, run_id: str, max_concurrent: int) -> bool:
        """QUEUED → RUNNING if it is this run's turn: fewer than ``max_concurrent`` running
        and no older run still queued (FIFO, so a big run is not starved by small ones)."""
        with self._lock:
            run = self._get(run_id)
            if run.status == RunStatus.RUNNING:
                return True  # a retry of the call that started it (only its supervisor asks)
            if run.status != RunStatus.QUEUED:
                raise ConflictError(f"fine-tune {run_id} is {run.status}, not QUEUED")
            running = sum(r.status == RunStatus.RUNNING for r in self._runs.values())
            older_queued = any(
                r.status == RunStatus.QUEUED and (r.created_at, r.id) < (run.created_at, run.id)
                for r in self._runs.values()
            )
            if running >= max_concurrent or older_queued:
                return False
            now = time.time()
            self._save(
                run.model_copy(
                    update={"status": RunStatus.RUNNING, "started_at": now, "queue_reason": None}
                )
            )
            return True

    def update(self, run_id: str, fields: dict[str, Any]) -> FinetuneRun:
        """Patch live fields (progress, workers, checkpoint, ...) of a run not yet finished."""
        unknown = set(fields) - _PATCHABLE
        if unknown:
            raise InvalidRequestError(f"fields {sorted(unknown)} cannot be patched")
        with self._lock:
            run = self._get(run_id)
            if run.status in TERMINAL:
                raise ConflictError(f"fine-tune {run_id} already {run.status}")
            return self._save(_patched(run, fields))

    def finish(self, run_id: str, status: str, fields: dict[str, Any] | None = None) -> FinetuneRun:
        """Move a run to a terminal status (with final fields, e.g. metrics or error)."""
        target = RunStatus(status)
        if target not in TERMINAL:
            raise InvalidRequestError(f"{target} is not a terminal status", param="status")
        fields = dict(fields or {})
        error = fields.pop("error", None)
        with self._lock:
            run = self._get(run_id)
            if target not in TRANSITIONS[run.status]:
                raise ConflictError(f"fine-tune {run_id} is {run.status}; cannot become {target}")
            run = _patched(run, fields)
            return self._save(
                run.model_copy(
                    update={
                        "status": target,
                        "finished_at": time.time(),
                        "error": error,
                        "queue_reason": None,
                    }
                )
            )

    def annotate(self, run_id: str, annotations: dict[str, Any]) -> FinetuneRun:
        """Merge ``annotations`` into the run's notes; allowed in any status, since results
        about a run (quality gate, promotion) arrive after it finished."""
        with self._lock:
            run = self._get(run_id)
            merged = {**run.annotations, **annotations}
            return self._save(_patched(run, {"annotations": merged}))

    def request_cancel(self, run_id: str) -> FinetuneRun:
        """Mark a live run as cancelling; exactly one of concurrent cancels wins.

        Raises ``NotFoundError`` for an unknown id and ``ConflictError`` if the run already
        finished or a cancel is already under way (the caller may just wait for the run).
        """
        with self._lock:
            run = self._get(run_id)
            if run.status in TERMINAL:
                raise ConflictError(
                    f"fine-tune {run_id} already {run.status}; nothing to cancel", param="id"
                )
            if run.cancel_requested_at is not None:
                raise ConflictError(
                    f"fine-tune {run_id} is already being cancelled "
                    f"(requested {time.time() - run.cancel_requested_at:.1f}s ago)",
                    param="id",
                )
            return self._save(run.model_copy(update={"cancel_requested_at": time.time()}))

    # -- reconciling -------------------------------------------------------------------------

    def reconcile(self) -> list[str]:
        """Finish every live run whose supervisor is gone; return their ids."""
        import ray

        with self._lock:
            live = [r for r in self._runs.values() if r.status not in TERMINAL]
        if live and not ray.is_initialized():
            return []  # no cluster to ask (used as a plain object)
        lost: list[tuple[FinetuneRun, str]] = []
        now = time.time()
        for run in live:
            if run.supervisor is None:
                if now - run.created_at > self._attach_timeout_s:
                    lost.append((run, "never started: no supervisor attached"))
                continue
            try:
                ray.get_actor(run.supervisor, namespace=self._namespace)
            except ValueError:
                lost.append((run, f"its supervisor {run.supervisor} is gone"))
        finished = []
        for run, why in lost:
            with self._lock:
                current = self._runs.get(run.id)
                if current is None or current.status in TERMINAL:
                    continue
                fields: dict[str, Any] = {}
                if current.cancel_requested_at is not None:
                    status = RunStatus.CANCELLED
                    fields["cancel_mode"] = "lost"
                else:
                    status = RunStatus.FAILED
                    fields["error"] = f"run lost: {why} (crash, kill or cluster restart)"
                logger.warning("reconciling %s → %s (%s)", run.id, status, why)
                self.finish(run.id, status, fields)
                finished.append(run.id)
                if current.placement_group_id:
                    self._orphans[current.placement_group_id] = now + self._orphan_delay_s
        self._remove_due_orphans()
        return finished

    def _remove_due_orphans(self) -> None:
        """Remove placement groups of lost runs once their delay has passed.

        Not at once: the lost run's Train controller may still be alive for a moment, and
        taking its placement group away would make it start a new worker group elsewhere.
        By the deadline it has died with its owner and Train's own clean-up has usually
        removed the group already; this is the safety net for when it could not (e.g. no
        dashboard).
        """
        now = time.time()
        for pg_id, due in list(self._orphans.items()):
            if due <= now:
                del self._orphans[pg_id]
                _remove_placement_group(pg_id)

    def _reconcile_loop(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            try:
                self.reconcile()
            except Exception:  # noqa: BLE001 - the loop must outlive a bad pass
                logger.exception("reconcile pass failed")

    # -- internals ---------------------------------------------------------------------------

    def _get(self, run_id: str) -> FinetuneRun:
        run = self._runs.get(run_id)
        if run is None:
            raise NotFoundError(f"no fine-tune {run_id!r}", param="id")
        return run

    def _save(self, run: FinetuneRun) -> FinetuneRun:
        run = run.model_copy(update={"updated_at": time.time()})
        self._store.save(run)  # durable first: a crash after this line loses nothing
        previous = self._runs.get(run.id)
        self._runs[run.id] = run
        if previous is None or previous.status != run.status:
            self._metrics.transition(
                run.status.value,
                run.created_at,
                run.started_at,
                run.finished_at,
                run.status.terminal,
            )
            self._count_states()
        return run

    def _count_states(self) -> None:
        """Set the runs-by-status gauge (on start and on every status change)."""
        counts: dict[str, int] = {}
        for r in self._runs.values():
            counts[r.status.value] = counts.get(r.status.value, 0) + 1
        self._metrics.counts(counts, tuple(s.value for s in RunStatus))


def _actor_name() -> str:
    """This registry's actor name (its metrics label), or ``local`` as a plain object."""
    import ray

    if not ray.is_initialized():
        return "local"
    return ray.get_runtime_context().get_actor_name() or "local"


def _remove_placement_group(pg_id: str | None) -> None:
    """Free an orphaned run's reserved resources at once (Ray Train's own clean-up actor
    needs the dashboard and can take seconds; the registry knows the id)."""
    if not pg_id:
        return
    import ray
    from ray.util.placement_group import (
        PlacementGroup,
        placement_group_table,
        remove_placement_group,
    )

    pg = PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg_id)))
    try:
        if placement_group_table(pg).get("state") not in (None, "REMOVED"):
            remove_placement_group(pg)
    except Exception:  # noqa: BLE001 - already gone, or the cluster it lived in is
        logger.debug("placement group %s not removed", pg_id, exc_info=True)


def _patched(run: FinetuneRun, fields: dict[str, Any]) -> FinetuneRun:
    # Validate through the model so patched values get the same types as loaded ones.
    data = run.model_dump()
    data.update(fields)
    return FinetuneRun.model_validate(data)
