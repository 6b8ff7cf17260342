"""A pool of synthesis worker actors: async concurrency toward the teacher under a rate limit.

Each worker is an async Ray actor holding its own teacher client and a ``Synthesizer`` with
its share of the run's limits (``max_in_flight / W`` requests in flight and
``requests_per_s / W`` starts per second), so the run as a whole stays within both without
a coordinator on the request path. Units go round-robin to workers; the driver awaits them
all and absorbs results in unit order. Task inputs (the seeds) travel once, by reference.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any

from llmvm_ray.config import Config
from llmvm_ray.synthesis.ratelimit import RateLimiter
from llmvm_ray.synthesis.run import Execute, Work
from llmvm_ray.synthesis.synthesizer import Synthesizer, TaskInput, UnitPlan, UnitResult
from llmvm_ray.teachers import build_teacher


class SynthesisWorker:
    """The actor class (wrapped with ``ray.remote`` by ``start_pool``)."""

    def __init__(
        self,
        config: Config,
        run_id: str,
        tasks: dict[str, TaskInput],
        max_in_flight: int,
        requests_per_s: float | None,
    ) -> None:
        self.tasks = tasks
        self.limiter = RateLimiter(max_in_flight, requests_per_s)
        self.synthesizer = Synthesizer.for_config(
            config,
            build_teacher(config, synthesis=True),
            run_id=run_id,
            limiter=self.limiter,
        )

    async def run_unit(self, plan: UnitPlan) -> UnitResult:
        return await self.synthesizer.run_unit(self.tasks[plan.task], plan)

    async def peak_in_flight(self) -> int:
        return self.limiter.peak_in_flight


def start_pool(
    config: Config, run_id: str, tasks: list[TaskInput], num_workers: int | None = None
) -> list[Any]:
    """Start the workers (they die with their driver: not detached)."""
    import ray

    s = config.synthesis
    workers = num_workers or s.num_workers
    per_worker = max(1, math.ceil(s.max_in_flight / workers))
    rps = s.requests_per_s / workers if s.requests_per_s else None
    actor = ray.remote(SynthesisWorker).options(
        num_cpus=s.worker_num_cpus, max_concurrency=per_worker + 4
    )
    by_task = {t.task: t for t in tasks}
    return [actor.remote(config, run_id, by_task, per_worker, rps) for _ in range(workers)]


def pool_executor(workers: list[Any]) -> Execute:
    async def execute(work: Work, done: Callable[[UnitResult], None]) -> list[UnitResult]:
        async def one(i: int, plan: UnitPlan) -> UnitResult:
            result = await workers[i % len(workers)].run_unit.remote(plan)
            done(result)
            return result

        return list(await asyncio.gather(*(one(i, plan) for i, (_, plan) in enumerate(work))))

    return execute


def stop_pool(workers: list[Any]) -> None:
    import ray

    for worker in workers:
        ray.kill(worker, no_restart=True)
