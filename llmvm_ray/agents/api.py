"""The agents' Python API.

In-process (no Ray)::

    from llmvm_ray.agents.api import run_agent, ModelSpec
    result = run_agent("What is the capital of the birthplace of Rumi?", tools,
                       agent="flat", model=ModelSpec(url="http://127.0.0.1:3002"))
    result.answer, result.model_calls, result.tool_calls

Many questions in parallel on Ray actors: ``AgentPool(config).run_many([AgentJob(...), ...])``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from llmvm_ray.agents.model import AgentModel, ModelSpec, build_model
from llmvm_ray.agents.pool import AgentJob, AgentPool
from llmvm_ray.agents.registry import AGENTS
from llmvm_ray.agents.tools import parse_tools
from llmvm_ray.agents.trace import AgentResult
from llmvm_ray.config import AgentsConfig
from llmvm_ray.protocol import ToolSpec

__all__ = ["AgentJob", "AgentPool", "AgentResult", "ModelSpec", "arun_agent", "run_agent"]


async def arun_agent(
    question: str,
    tools: list[dict[str, Any] | ToolSpec],
    *,
    model: AgentModel | ModelSpec,
    agent: str = "rebel",
    config: AgentsConfig | None = None,
) -> AgentResult:
    if agent not in AGENTS:
        raise ValueError(f"unknown agent {agent!r}; choose one of {', '.join(AGENTS)}")
    backend = build_model(model) if isinstance(model, ModelSpec) else model
    runner = AGENTS[agent](backend, parse_tools(tools), config or AgentsConfig())
    try:
        return await runner.run(question)
    finally:
        await runner.caller.aclose()
        if isinstance(model, ModelSpec):
            await backend.aclose()


def run_agent(
    question: str,
    tools: list[dict[str, Any] | ToolSpec],
    *,
    model: AgentModel | ModelSpec,
    agent: str = "rebel",
    config: AgentsConfig | None = None,
) -> AgentResult:
    """Answer one question with one agent, in this process; see the module docstring."""
    return asyncio.run(arun_agent(question, tools, model=model, agent=agent, config=config))
