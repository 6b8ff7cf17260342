"""A scripted model backend: ONLY for the agents' control-flow unit tests.

It answers each decision step from a table (dynamic prompt -> completion) or a function of
the call, and records every call, so tests can drive an agent down any path (right answers,
invalid picks, bad JSON, endless splitting, a hanging model) deterministically.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from llmvm_ray.agents.model import ModelCallError, ModelReply, StepCall


class ScriptedModel:
    def __init__(
        self,
        table: dict[str, str] | None = None,
        fallback: Callable[[StepCall], str] | None = None,
        *,
        hang: bool = False,
        fail: bool = False,
    ) -> None:
        self.table = table or {}
        self.fallback = fallback
        self.hang = hang
        self.fail = fail
        self.calls: list[StepCall] = []

    async def complete(self, call: StepCall) -> ModelReply:
        self.calls.append(call)
        if self.hang:
            await asyncio.sleep(3600)
        if self.fail:
            raise ModelCallError("scripted failure")
        if call.prompt in self.table:
            text = self.table[call.prompt]
        elif self.fallback is not None:
            text = self.fallback(call)
        else:
            raise AssertionError(f"unscripted {call.step} prompt: {call.prompt!r}")
        return ModelReply(text=" " + text, served_by="teacher", task_id=f"task-{call.step}")

    async def aclose(self) -> None:
        return None
