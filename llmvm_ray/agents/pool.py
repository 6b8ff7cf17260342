"""Agent runs as Ray actors: one ``AgentWorker`` actor runs many runs at once (async), an
``AgentPool`` spreads runs over a few of them with bounded concurrency.

A run's inputs are plain data (agent name, question, tool dicts, a ``ModelSpec``), so they
travel to any node; its output is the ``AgentResult`` as a dict. A worker builds each model
backend once and shares it across its runs (a local step model then batches their calls).
A dead actor or a run that outlives its deadline becomes a "don't know" result, never a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from llmvm_ray.agents.model import AgentModel, ModelSpec, build_model
from llmvm_ray.agents.registry import AGENTS
from llmvm_ray.agents.tools import ToolCaller, parse_tools
from llmvm_ray.agents.trace import AgentResult
from llmvm_ray.config import AgentsConfig


@dataclass
class AgentJob:
    agent: str
    question: str
    tools: list[dict[str, Any]]
    model: ModelSpec
    meta: dict[str, Any] = field(default_factory=dict)  # carried back untouched


class AgentWorker:
    """The actor body (also usable in-process)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = AgentsConfig(**config)
        self._models: dict[str, AgentModel] = {}
        self._caller = ToolCaller(self.config)

    def _model(self, spec: ModelSpec) -> AgentModel:
        key = spec.key()
        if key not in self._models:
            self._models[key] = build_model(spec)
        return self._models[key]

    async def run(
        self, agent: str, question: str, tools: list[dict[str, Any]], model: dict[str, Any]
    ) -> dict[str, Any]:
        agent_cls = AGENTS[agent]
        runner = agent_cls(
            self._model(ModelSpec(**model)), parse_tools(tools), self.config, self._caller
        )
        result = await runner.run(question)
        return result.model_dump(mode="json")

    async def ping(self) -> bool:
        return True


def failed_result(job: AgentJob, reason: str, started: float) -> AgentResult:
    from llmvm_ray.agents.prompts import DONT_KNOW

    return AgentResult(
        agent=job.agent,  # type: ignore[arg-type]
        question=job.question,
        answer=DONT_KNOW,
        status="dont_know",
        reason=reason,
        latency_ms=round((time.perf_counter() - started) * 1000, 3),
    )


class AgentPool:
    """``size`` agent actors, each running up to ``runs_per_actor`` runs at once."""

    def __init__(
        self,
        config: AgentsConfig,
        *,
        size: int | None = None,
        runs_per_actor: int | None = None,
    ) -> None:
        import ray

        self.config = config
        self.size = size or config.pool_size
        self.runs_per_actor = runs_per_actor or config.runs_per_actor
        actor = ray.remote(AgentWorker).options(
            max_concurrency=self.runs_per_actor, num_cpus=config.actor_num_cpus
        )
        self.actors = [actor.remote(config.model_dump()) for _ in range(self.size)]
        self._next = 0
        # Grace beyond a run's own deadline for scheduling and transfer.
        self.deadline_s = config.run_timeout_s + 30.0

    @property
    def capacity(self) -> int:
        return self.size * self.runs_per_actor

    def submit(self, job: AgentJob) -> Any:
        actor = self.actors[self._next % len(self.actors)]
        self._next += 1
        return actor.run.remote(
            job.agent, job.question, job.tools, job.model.model_dump(mode="json")
        )

    async def run(self, job: AgentJob) -> AgentResult:
        """One run (from async code, e.g. the HTTP ingress)."""
        from ray.exceptions import RayError

        started = time.perf_counter()
        ref = self.submit(job)
        try:
            data = await asyncio.wait_for(asyncio.wrap_future(ref.future()), self.deadline_s)
        except TimeoutError:
            _cancel(ref)
            return failed_result(job, "pool_timeout: the run outlived its deadline", started)
        except RayError as exc:
            return failed_result(job, f"actor_failed: {type(exc).__name__}", started)
        return AgentResult.model_validate(data)

    def run_many(self, jobs: list[AgentJob], progress: Any = None) -> list[AgentResult]:
        """Every job, at most ``capacity`` in flight; results in the jobs' order."""
        import ray
        from ray.exceptions import RayError

        results: list[AgentResult | None] = [None] * len(jobs)
        pending: dict[Any, tuple[int, float]] = {}
        queue = list(range(len(jobs)))
        queue.reverse()
        done = 0
        while queue or pending:
            while queue and len(pending) < self.capacity:
                i = queue.pop()
                pending[self.submit(jobs[i])] = (i, time.perf_counter())
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in ready:
                i, started = pending.pop(ref)
                try:
                    results[i] = AgentResult.model_validate(ray.get(ref))
                except RayError as exc:
                    reason = f"actor_failed: {type(exc).__name__}"
                    results[i] = failed_result(jobs[i], reason, started)
                done += 1
                if progress is not None:
                    progress(done, len(jobs), results[i])
            now = time.perf_counter()
            for ref, (i, started) in list(pending.items()):
                if now - started > self.deadline_s:
                    _cancel(ref)
                    pending.pop(ref)
                    reason = "pool_timeout: the run outlived its deadline"
                    results[i] = failed_result(jobs[i], reason, started)
                    done += 1
        return [r for r in results if r is not None]

    def shutdown(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []


def _cancel(ref: Any) -> None:
    import ray

    # Already finished or gone: nothing to cancel.
    with contextlib.suppress(Exception):
        ray.cancel(ref)
