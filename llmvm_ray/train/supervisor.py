"""The actor that drives one fine-tune from QUEUED to a terminal status, whatever happens.

Why a supervisor per run: the caller (an HTTP request, a CLI, a Ray job) must not block on
training, yet someone has to wait for resources, start ``fit()``, forward progress to the
registry, act on a cancel and — above all — guarantee that when the run ends, every worker
is gone and the placement group removed. The supervisor is that someone. It holds no CPU
(``num_cpus=0``) so it can wait in the queue without taking what Serve replicas need.

Cancelling, in order:
1. cooperative: the cancel flag is returned to rank 0 on its next per-step poll; all ranks
   save a last checkpoint and return; Ray Train shuts its worker group down normally;
2. hard, after ``cancel_grace_s``: the task running ``fit()`` is force-cancelled (its
   process owns Train's controller, so the controller and then the workers die with it);
3. always: we wait until each worker actor registered with us is confirmed dead (killing
   stragglers), then remove their placement group ourselves — without relying on Train's
   clean-up actor, which needs the dashboard — and only then write the terminal status, so
   "CANCELLED" means "the resources are back".
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from typing import Any

from llmvm_ray.config import TrainQueueConfig
from llmvm_ray.errors import ConflictError
from llmvm_ray.registry.client import RegistryClient
from llmvm_ray.registry.records import RunStatus, WorkerInfo
from llmvm_ray.train.spec import RunSpec

logger = logging.getLogger(__name__)

_RELEASE_TIMEOUT_S = 30.0
_SELF_EXIT_S = 10.0
_WATCH_TICK_S = 0.1
_MAX_ERROR_CHARS = 4000
_FINISH_ATTEMPTS = 8
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class QueueTimeout(Exception):
    pass


class RunSupervisor:
    """One per run; created by ``FinetuneService`` as a named actor (threaded)."""

    def __init__(self, spec: RunSpec, registry: Any, queue: TrainQueueConfig) -> None:
        self._spec = spec
        self._registry = RegistryClient(registry)
        self._queue = queue
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._cancel_at: float | None = None
        self._done = threading.Event()
        self._dirty: dict[str, Any] = {}
        self._workers: dict[int, WorkerInfo] = {}
        self._handles: list[Any] = []  # every worker actor ever registered, all attempts
        self._pgs: dict[str, Any] = {}  # placement groups by id hex, in attempt order
        self._result: tuple[dict[str, float], str | None] | None = None
        self._fit_ref: Any = None
        self._hard_stopped = False
        self._runner: threading.Thread | None = None

    # -- called by the training workers (see control.py) -----------------------------------

    def register_worker(self, rank: int, pid: int, node_id: str, handle: Any, pg: Any) -> int:
        """Remember a worker so it can be killed and verified gone; return its attempt."""
        with self._lock:
            key = pg.id.hex() if pg is not None else f"no-pg-{len(self._pgs)}"
            if key not in self._pgs:
                self._pgs[key] = pg
                self._workers = {}  # a new worker group: a new attempt
            attempt = list(self._pgs).index(key) + 1
            self._handles.append(handle)
            self._workers[rank] = WorkerInfo(rank=rank, pid=pid, node_id=node_id, attempt=attempt)
            self._dirty["workers"] = [w.model_dump() for _, w in sorted(self._workers.items())]
            if pg is not None:
                self._dirty["placement_group_id"] = pg.id.hex()
        logger.info("%s: worker rank %d pid %d (attempt %d)", self._spec.run_id, rank, pid, attempt)
        return attempt

    def poll(self, progress: dict[str, Any]) -> bool:
        """Rank 0, every step: take its progress, answer whether to stop."""
        with self._lock:
            self._dirty["progress"] = progress
        return self._cancel.is_set()

    def checkpoint_saved(self, uri: str, step: int) -> None:
        with self._lock:
            self._dirty["checkpoint_path"] = uri
            self._dirty["checkpoint_step"] = step

    def finished(self, metrics: dict[str, float], output_uri: str | None) -> None:
        self._result = (metrics, output_uri)

    # -- called by the service ---------------------------------------------------------------

    def cancel(self) -> None:
        """Ask the run to stop (idempotent); the registry already recorded the request."""
        with self._lock:
            if not self._cancel.is_set():
                self._cancel_at = time.monotonic()
                self._cancel.set()
                logger.info("%s: cancel requested", self._spec.run_id)

    def describe(self) -> dict[str, Any]:
        """Internal state, for operators and tests."""
        with self._lock:
            return {
                "attempts": len(self._pgs),
                "workers": [w.model_dump() for w in self._workers.values()],
                "hard_stopped": self._hard_stopped,
                "cancelled": self._cancel.is_set(),
            }

    # -- the run ----------------------------------------------------------------------------

    def start(self) -> None:
        """Drive the run in a thread of this actor's own and return at once (idempotent).

        Why not one actor call lasting the whole run: a call belongs to its caller, and a
        caller that exits at once (``llmvm finetune start`` without ``--wait``) took it
        along, leaving the run QUEUED forever. The creator waits for this call instead, so
        the run is under way before it returns.
        """
        with self._lock:
            if self._runner is None:
                self._runner = threading.Thread(
                    target=self.run, name=f"run-{self._spec.run_id}", daemon=True
                )
                self._runner.start()

    def run(self) -> str:
        """Drive the run to its end, record the terminal status, then exit the actor."""
        pusher = threading.Thread(target=self._push_loop, daemon=True)
        pusher.start()
        try:
            status, fields = self._run()
        except QueueTimeout as exc:
            status, fields = RunStatus.FAILED, {"error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - whatever it is, the run must end FAILED
            logger.exception("%s: supervisor failed", self._spec.run_id)
            status, fields = RunStatus.FAILED, {"error": f"supervisor error: {exc!r}"}
            self._stop_everything()
        self._done.set()
        pusher.join(timeout=5)
        with self._lock:
            final = {**self._dirty, **fields}
        if status == RunStatus.CANCELLED:
            final.pop("metrics", None)
        self._record(status, final)
        logger.info("%s: %s", self._spec.run_id, status)
        self._exit()
        return str(status)

    def _record(self, status: RunStatus, fields: dict[str, Any]) -> None:
        """Write the terminal status, retrying while the registry restarts. If it stays
        unreachable we exit anyway and its reconciling marks the run FAILED (never stuck)."""
        for attempt in range(_FINISH_ATTEMPTS):
            try:
                self._registry.finish(self._spec.run_id, status, fields)
                return
            except ConflictError as exc:  # already finished elsewhere (e.g. reconciled)
                logger.warning("%s: %s", self._spec.run_id, exc.message)
                return
            except Exception:  # noqa: BLE001 - registry restarting or unreachable
                logger.exception("%s: recording %s failed", self._spec.run_id, status)
                time.sleep(min(2**attempt, 30))

    def _run(self) -> tuple[RunStatus, dict[str, Any]]:
        import ray

        from llmvm_ray.train.trainer import run_fit

        if not self._wait_for_turn() or self._cancel.is_set():
            return RunStatus.CANCELLED, {"cancel_mode": "queued"}
        fit = ray.remote(run_fit).options(num_cpus=0, max_retries=0)
        self._fit_ref = fit.remote(self._spec)
        error = self._watch()
        self._release()
        if self._cancel.is_set():
            return RunStatus.CANCELLED, {
                "cancel_mode": "hard" if self._hard_stopped else "cooperative"
            }
        if error is not None:
            return RunStatus.FAILED, {"error": _describe(error)}
        if self._result is None:
            return RunStatus.FAILED, {"error": "training ended without reporting a result"}
        metrics, output_uri = self._result
        return RunStatus.SUCCEEDED, {
            "metrics": metrics,
            "output_path": output_uri,
            "output_format": self._spec.output_format,
        }

    def _stop_everything(self) -> None:
        """After an unexpected error of our own: training must not outlive the record."""
        import ray

        if self._fit_ref is None:
            return
        with contextlib.suppress(Exception):
            if not ray.wait([self._fit_ref], timeout=0)[0]:
                self._hard_stop()
            self._release()

    def _wait_for_turn(self) -> bool:
        """Stay QUEUED until it is our turn and the workers' resources are free.

        Checking free resources before Train asks for its placement group means a run never
        sits on a half-placed reservation while Serve replicas wait for the same CPUs.
        Returns False if cancelled while waiting.
        """
        import ray

        required = self._spec.total_resources()
        deadline = time.monotonic() + self._queue.timeout_s if self._queue.timeout_s else None
        last_reason = None
        while not self._cancel.is_set():
            free = ray.available_resources()
            short = {k: v for k, v in required.items() if free.get(k, 0.0) + 1e-9 < v}
            if not short:
                try:
                    started = self._registry.try_start(
                        self._spec.run_id, self._queue.max_concurrent_runs
                    )
                except (ray.exceptions.GetTimeoutError, ray.exceptions.RayActorError):
                    # The registry is restarting (or gone a while): a queued run waits for
                    # it rather than fail; try_start is idempotent if the call had landed.
                    logger.warning("%s: registry unavailable, still queued", self._spec.run_id)
                    self._cancel.wait(self._queue.poll_interval_s)
                    continue
                if started:
                    return True
                reason = (
                    "waiting for earlier fine-tunes "
                    f"(train_queue.max_concurrent_runs={self._queue.max_concurrent_runs})"
                )
            else:
                reason = "waiting for resources: " + ", ".join(
                    f"{k} {v:g} needed, {free.get(k, 0.0):g} free" for k, v in short.items()
                )
            if reason != last_reason:
                logger.info("%s: %s", self._spec.run_id, reason)
                self._registry.update(self._spec.run_id, {"queue_reason": reason})
                last_reason = reason
            if deadline is not None and time.monotonic() > deadline:
                raise QueueTimeout(f"still queued after {self._queue.timeout_s:g}s: {reason}")
            self._cancel.wait(self._queue.poll_interval_s)
        return False

    def _watch(self) -> BaseException | None:
        """Wait for ``fit()``; hard-stop it once a cancel's grace period is over."""
        import ray

        grace = self._spec.params.cancel_grace_s
        stopped_at: float | None = None
        while True:
            ready, _ = ray.wait([self._fit_ref], timeout=_WATCH_TICK_S)
            if ready:
                try:
                    ray.get(self._fit_ref)
                    return None
                except Exception as exc:  # noqa: BLE001 - reported as the run's error
                    return None if self._hard_stopped else exc
            if stopped_at is not None and time.monotonic() - stopped_at > _RELEASE_TIMEOUT_S:
                logger.error("%s: fit task outlived its hard stop", self._spec.run_id)
                return None
            cancel_at = self._cancel_at
            if (
                cancel_at is not None
                and not self._hard_stopped
                and time.monotonic() - cancel_at >= grace
            ):
                self._hard_stop()
                stopped_at = time.monotonic()

    def _hard_stop(self) -> None:
        """Kill the process running ``fit()``; ``_release`` then finishes the job.

        Train's controller is owned by that process and dies with it, and the workers (owned
        by the controller) die with the controller. We must not kill workers or remove the
        placement group *before* the controller is gone: a live controller would take that
        for a worker failure and start a new worker group in a new placement group that we
        would not know about (this leaked CPUs when tried).
        """
        import ray

        grace = self._spec.params.cancel_grace_s
        logger.warning("%s: not stopped after %.1fs; killing it", self._spec.run_id, grace)
        self._hard_stopped = True
        ray.cancel(self._fit_ref, force=True)

    def _release(self) -> None:
        """Return only when every worker is dead and every placement group removed.

        Workers are first given ``_SELF_EXIT_S`` to exit on their own (Train shuts them down
        after a normal return; fate-sharing kills them after a hard stop), which also proves
        the controller is gone; stragglers are then killed. Placement groups go last.
        """
        import ray
        from ray.util.placement_group import placement_group_table, remove_placement_group

        with self._lock:
            handles, pgs = list(self._handles), [pg for pg in self._pgs.values() if pg]
        started = time.monotonic()
        for handle in handles:
            while time.monotonic() - started < _RELEASE_TIMEOUT_S:
                try:
                    ray.get(handle.__ray_ready__.remote(), timeout=0.2)
                except ray.exceptions.RayActorError:
                    break  # dead
                except ray.exceptions.GetTimeoutError:
                    pass  # alive and busy
                if time.monotonic() - started > _SELF_EXIT_S:
                    logger.warning("%s: killing a worker that did not exit", self._spec.run_id)
                    ray.kill(handle, no_restart=True)
                time.sleep(0.05)
        for pg in pgs:
            if placement_group_table(pg).get("state") != "REMOVED":
                with contextlib.suppress(Exception):  # raced with Train's own removal
                    remove_placement_group(pg)

    # -- background --------------------------------------------------------------------------

    def _push_loop(self) -> None:
        """Write live progress to the registry; notice cancels recorded there."""
        interval = self._spec.params.progress_interval_s
        while not self._done.wait(interval):
            with self._lock:
                fields, self._dirty = self._dirty, {}
            try:
                if fields:
                    run = self._registry.update(self._spec.run_id, fields)
                else:
                    run = self._registry.get(self._spec.run_id)
            except ConflictError:
                return  # finished elsewhere
            except Exception:  # noqa: BLE001 - the registry may be restarting; retry
                logger.exception("%s: progress push failed", self._spec.run_id)
                with self._lock:
                    self._dirty = {**fields, **self._dirty}
                continue
            if run.cancel_requested_at is not None:
                self.cancel()

    def _exit(self) -> None:
        """End this actor once its run is recorded: a detached one would otherwise stay.

        ``__ray_terminate__`` lets calls in flight finish first. (``exit_actor`` only works
        from inside an actor call, and the run has its own thread.)"""
        import ray

        try:
            me = ray.get_runtime_context().current_actor
        except RuntimeError:  # not inside an actor (unit tests)
            return
        me.__ray_terminate__.remote()


def _describe(error: BaseException) -> str:
    """The run's error for humans: Ray's task wrapper removed, colours stripped, bounded."""
    cause = getattr(error, "cause", None)  # RayTaskError wraps Ray Train's own error
    if isinstance(cause, BaseException):
        error = cause
    text = _ANSI.sub("", str(error) or repr(error))
    if len(text) > _MAX_ERROR_CHARS:
        text = text[:1000] + "\n...\n" + text[-(_MAX_ERROR_CHARS - 1005) :]
    return f"{type(error).__name__}: {text}"
