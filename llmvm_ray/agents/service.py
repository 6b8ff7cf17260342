"""The agents behind the HTTP API (used by the ingress's optimizing endpoints).

Runs go to an ``AgentPool`` of Ray actors created on first use. Their model calls come back
to this same service's ``/v1/complete`` (or ``agents.model_url``) with the caller's own API
key, so every decision step is an optimizing task of the caller's tenant: recorded,
distilled and served by a student like any other.
"""

from __future__ import annotations

import time
from typing import Any

from llmvm_ray.agents.model import ModelSpec
from llmvm_ray.agents.pool import AgentJob, AgentPool
from llmvm_ray.agents.trace import AgentResult
from llmvm_ray.config import Config
from llmvm_ray.protocol import AgentRunRequest, CompleteRequest, LLMVMMetadata
from llmvm_ray.runtime import service_url


class AgentService:
    def __init__(self, config: Config) -> None:
        self.config = config
        self._pool: AgentPool | None = None

    def pool(self) -> AgentPool:
        if self._pool is None:
            self._pool = AgentPool(self.config.agents)
        return self._pool

    def model_spec(
        self,
        api_key: str | None,
        big_model: str | None = None,
        small_model: str | None = None,
        finetune: bool | None = None,
    ) -> ModelSpec:
        agents = self.config.agents
        return ModelSpec(
            kind="service",
            url=agents.model_url or service_url(self.config),
            api_key=api_key,
            big_model=big_model,
            small_model=small_model,
            finetune=agents.finetune if finetune is None else finetune,
            timeout_s=agents.model_timeout_s,
        )

    async def run(self, request: AgentRunRequest, api_key: str | None) -> AgentResult:
        job = AgentJob(
            agent=request.agent,
            question=request.question,
            tools=[t.model_dump() for t in request.tools],
            model=self.model_spec(
                api_key, request.big_model, request.small_model, request.finetune
            ),
        )
        return await self.pool().run(job)

    async def complete(
        self, request: CompleteRequest, api_key: str | None
    ) -> tuple[AgentResult, LLMVMMetadata]:
        """LLM-VM's ``/v1/complete`` with ``tools``: the REBEL agent answers the prompt."""
        started = time.perf_counter()
        question = (
            f"{request.context.strip()}\n{request.prompt}"
            if request.context.strip()
            else request.prompt
        )
        result = await self.run(
            AgentRunRequest(
                agent="rebel",
                question=question,
                tools=request.tools or [],
                big_model=request.big_model,
                small_model=request.small_model,
            ),
            api_key,
        )
        served = {c.served_by for c in result.model_calls}
        meta = LLMVMMetadata.since(
            started,
            model="llmvm",
            base_model=request.big_model or self.config.teacher.model,
            served_by="student" if served == {"student"} else "teacher",
            seed=request.seed or 0,
            prompt_tokens=0,
            completion_tokens=0,
        )
        return result, meta

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


def agent_payload(result: AgentResult) -> dict[str, Any]:
    return {"object": "agent.run", **result.model_dump(mode="json")}
