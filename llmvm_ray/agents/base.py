"""What the three agents share: budgets, the recorded model and tool calls, the run wrapper.

A run can end in only two ways: an answer, or "don't know" with the reason and the trace so
far. Limits (model calls, tool calls, depth, the whole run's time) raise ``GiveUp`` inside
and are caught in ``run``; a model that cannot be reached is a ``GiveUp`` too. Nothing an
agent does can hang past ``run_timeout_s``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from llmvm_ray.agents import prompts as P
from llmvm_ray.agents.model import AgentModel, ModelCallError, StepCall
from llmvm_ray.agents.tools import ToolCaller, ToolError
from llmvm_ray.agents.trace import AgentName, AgentResult, ModelCallRecord, ToolCallRecord, Trace
from llmvm_ray.config import AgentsConfig
from llmvm_ray.protocol import ToolSpec


class GiveUp(Exception):
    """Stop the run and answer "don't know" (``reason`` goes into the result)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Agent:
    name: AgentName

    def __init__(
        self,
        model: AgentModel,
        tools: list[ToolSpec],
        config: AgentsConfig,
        caller: ToolCaller | None = None,
    ) -> None:
        self.model = model
        self.tools = tools
        self.config = config
        self.caller = caller or ToolCaller(config)
        self.trace = Trace()

    # -- the run --------------------------------------------------------------------------

    async def run(self, question: str) -> AgentResult:
        """Answer ``question``; never raises for limits, tool or model failures."""
        self.trace = Trace()
        answer: str | None = None
        reason: str | None = None
        try:
            answer = await asyncio.wait_for(self.solve(question), self.config.run_timeout_s)
        except GiveUp as exc:
            reason = exc.reason
        except TimeoutError:
            reason = f"run_timeout: no answer within {self.config.run_timeout_s}s"
        if answer is not None and not answer.strip():
            reason, answer = "empty answer", None
        if reason:
            self.trace.event("give_up", 0, question, reason=reason)
        return self.trace.result(self.name, question, answer, reason)

    async def solve(self, question: str) -> str | None:
        raise NotImplementedError

    # -- model calls ----------------------------------------------------------------------

    async def ask(self, step: str, context: str, prompt: str, *, temperature: float = 0.0) -> str:
        if len(self.trace.model_calls) >= self.config.max_model_calls:
            raise GiveUp(f"step_limit: {self.config.max_model_calls} model calls used")
        record = ModelCallRecord(step=step, prompt=prompt, temperature=temperature)
        self.trace.model_calls.append(record)
        started = time.perf_counter()
        call = StepCall(
            step=step,
            context=context,
            prompt=prompt,
            max_tokens=self.config.step_max_tokens,
            temperature=temperature,
            stop=P.STOP,
        )
        try:
            reply = await asyncio.wait_for(self.model.complete(call), self.config.model_timeout_s)
        except TimeoutError:
            record.error = "timeout"
            raise GiveUp(f"model_timeout: step '{step}'") from None
        except ModelCallError as exc:
            record.error = str(exc)
            raise GiveUp(f"model_error: {exc}") from None
        finally:
            record.latency_ms = round((time.perf_counter() - started) * 1000, 3)
        record.completion = reply.text
        record.served_by = reply.served_by
        record.task_id = reply.task_id
        record.model = reply.model
        return reply.text

    # -- tools ----------------------------------------------------------------------------

    def tool(self, index: int) -> ToolSpec:
        return self.tools[index - 1]

    async def call_tool(self, index: int, values: dict[str, Any]) -> str | None:
        """Call tool ``index`` (1-based); the reply text for the model, or None on failure."""
        if len(self.trace.tool_calls) >= self.config.max_tool_calls:
            raise GiveUp(f"tool_limit: {self.config.max_tool_calls} tool calls used")
        tool = self.tool(index)
        record = ToolCallRecord(
            tool=index,
            description=tool.description,
            url=tool.url,
            method=tool.method,
            inputs=dict(values),
        )
        self.trace.tool_calls.append(record)
        started = time.perf_counter()
        try:
            reply = await self.caller.call(tool, values)
        except ToolError as exc:
            record.error = str(exc)
            return None
        finally:
            record.latency_ms = round((time.perf_counter() - started) * 1000, 3)
        record.status = reply.status
        record.reply = P.reply_text(reply.data, self.config.reply_chars)
        return record.reply

    # -- steps shared by the agents -------------------------------------------------------

    async def pick(self, question: str, depth: int, *, temperature: float = 0.0) -> int | None:
        text = await self.ask(
            "pick", P.pick_context(self.tools), P.pick_prompt(question), temperature=temperature
        )
        choice = P.parse_pick(text, len(self.tools))
        self.trace.event("pick", depth, question, raw=text.strip(), tool=choice)
        return choice

    async def answer_from_reply(self, question: str, reply: str, depth: int) -> str | None:
        text = await self.ask("reply", P.reply_context(), P.reply_prompt(question, reply))
        answer = P.clean_answer(text)
        self.trace.event("answer", depth, question, answer=answer, source="tool")
        return answer or None

    async def recall(self, question: str, facts: list[P.Fact], depth: int) -> str | None:
        text = await self.ask("recall", P.recall_context(), P.recall_prompt(question, facts))
        answer = P.clean_answer(text)
        self.trace.event("answer", depth, question, answer=answer, source="memory")
        return answer or None

    async def guess_once(
        self, question: str, index: int, depth: int, attempt: int
    ) -> dict[str, Any] | None:
        """One try at the tool's JSON input (temperature rises with ``attempt``); None when
        the reply does not parse. A tool without dynamic params needs no model call."""
        tool = self.tool(index)
        keys = list(tool.dynamic_params)
        if not keys:
            return {}
        text = await self.ask(
            "input",
            P.input_context(tool),
            P.input_prompt(question, keys),
            temperature=attempt * self.config.retry_temperature_step,
        )
        values = P.parse_input(text, keys)
        self.trace.event(
            "input",
            depth,
            question,
            tool=index,
            raw=text.strip(),
            values=values,
            attempt=attempt + 1,
        )
        return values
