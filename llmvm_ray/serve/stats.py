"""``GET /v1/stats``: one tenant's summary, the same from every ingress replica.

Why not from the Prometheus counters: those live per process (each replica counts what it
answered) and reset when a replica restarts. The optimizer actor (one per application) and
the registry actor (one per cluster) already hold the durable, cluster-wide counts: every
optimizing answer is reported to the optimizer and persisted in its task state, and every
fine-tune is a registry record. The summary is computed from them on request, for the
caller's tenant only (another tenant's tasks do not exist as far as a tenant can tell).

Plain (non-optimizing) model traffic is not in it: per-model request and token rates are
in Prometheus (``ray_llmvm_requests_total``, ``ray_llmvm_tokens_total``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

from llmvm_ray.config import Config
from llmvm_ray.protocol import (
    StatsFinetunes,
    StatsRequests,
    StatsResponse,
    StatsShare,
    StatsTasks,
    StatsTokens,
)
from llmvm_ray.registry.records import RunStatus

ROUTES = ("teacher", "student")


async def collect_stats(
    config: Config, optimizer: Any, registry: Callable[[], Any], tenant: str
) -> StatsResponse:
    """Ask the optimizer actor (if the app runs one) and the registry, then summarize.

    ``registry`` makes the blocking ``RegistryClient`` on first use (it may create the
    registry actor), so it is called in a worker thread.
    """
    tasks: list[dict[str, Any]] = []
    if optimizer is not None:
        tasks = await optimizer.list_tasks.remote(tenant)
    runs = await asyncio.to_thread(lambda: registry().list(tenant=tenant))
    return summarize(
        tasks,
        [str(r.status) for r in runs],
        config.optimizer.teacher_cost_per_1k_tokens,
        optimizer_enabled=optimizer is not None,
    )


def summarize(
    tasks: Iterable[dict[str, Any]],
    run_statuses: Iterable[str],
    cost_per_1k_tokens: float,
    optimizer_enabled: bool = True,
) -> StatsResponse:
    """The summary of task views (``TaskState.summary()``) and fine-tune statuses."""
    teacher = student = shadow = prompt = completion = saved_tokens = 0
    recorded = synthesized = rollbacks = 0
    by_route = dict.fromkeys(ROUTES, 0)
    count = 0
    for t in tasks:
        count += 1
        calls = t["calls"]
        teacher += calls["teacher"]
        student += calls["student"]
        shadow += calls["shadow"]
        tokens = t.get("tokens") or {}
        prompt += tokens.get("prompt", 0)
        completion += tokens.get("completion", 0)
        saved_tokens += t["teacher_tokens_saved"]
        recorded += t["examples"]["recorded"]
        synthesized += t["examples"]["synthesized"]
        rollbacks += t["rollbacks"]
        by_route[t["route"]] = by_route.get(t["route"], 0) + 1
    answered = teacher + student
    by_state = {s.value: 0 for s in RunStatus}
    for status in run_statuses:
        by_state[status] = by_state.get(status, 0) + 1
    return StatsResponse(
        optimizer_enabled=optimizer_enabled,
        requests=StatsRequests(total=answered, teacher=teacher, student=student, shadow=shadow),
        tokens=StatsTokens(prompt=prompt, completion=completion, total=prompt + completion),
        share=StatsShare(
            teacher=teacher / answered if answered else None,
            student=student / answered if answered else None,
        ),
        teacher_calls_saved=student,
        teacher_tokens_saved=saved_tokens,
        estimated_cost_saved=saved_tokens / 1000.0 * cost_per_1k_tokens,
        teacher_cost_per_1k_tokens=cost_per_1k_tokens,
        tasks=StatsTasks(
            total=count,
            by_route=by_route,
            examples_recorded=recorded,
            examples_synthesized=synthesized,
            rollbacks=rollbacks,
        ),
        fine_tunes=StatsFinetunes(total=sum(by_state.values()), by_state=by_state),
    )
