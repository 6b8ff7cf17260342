"""The training workers' line to their run's supervisor actor.

Why through the supervisor and not ``ray.train.report``: a report is a barrier across all
workers and costs a controller round trip, far too much every step. One small actor call
per step from rank 0 both pushes progress and fetches the cancel flag; rank 0 then shares
the flag with the other ranks in the same all-reduce as the loss, so every rank stops at
the same step (a rank that stopped alone would hang the others in their next collective).
"""

from __future__ import annotations

import logging
import os
from typing import Any

logger = logging.getLogger(__name__)

_CALL_TIMEOUT_S = 60.0


class WorkerControl:
    """Registers this worker with the supervisor; rank 0 polls it every step."""

    def __init__(self, supervisor: str, namespace: str, rank: int) -> None:
        import ray
        from ray.util.placement_group import get_current_placement_group

        self._rank = rank
        self._sup = ray.get_actor(supervisor, namespace=namespace)
        ctx = ray.get_runtime_context()
        # Our own handle and placement group let the supervisor kill us and free the CPUs
        # itself if a cooperative stop does not finish in time.
        self.attempt = self._call(
            "register_worker",
            rank,
            os.getpid(),
            ctx.get_node_id(),
            ctx.current_actor,
            get_current_placement_group(),
        )

    def _call(self, method: str, *args: Any) -> Any:
        import ray

        return ray.get(getattr(self._sup, method).remote(*args), timeout=_CALL_TIMEOUT_S)

    def poll(self, progress: dict[str, Any]) -> bool:
        """Push progress; True when the run must stop (cancelled, or supervisor gone)."""
        import ray

        try:
            return bool(self._call("poll", progress))
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as exc:
            logger.error("supervisor unreachable (%s); stopping", exc)
            return True

    def checkpoint_saved(self, uri: str, step: int) -> None:
        self._notify("checkpoint_saved", uri, step)

    def finished(self, metrics: dict[str, float], output_uri: str | None) -> None:
        self._notify("finished", metrics, output_uri)

    def _notify(self, method: str, *args: Any) -> None:
        """Best effort: a lost supervisor must not turn into a worker failure (which Train
        would retry); the next ``poll`` stops the run instead."""
        import ray

        try:
            self._call(method, *args)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as exc:
            logger.error("supervisor unreachable for %s (%s)", method, exc)
