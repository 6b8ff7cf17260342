"""Backward chaining: a tool's dynamic parameters become sub-goals.

For a goal, pick a tool (0 / -1: answer from memory); for each of the tool's dynamic
parameters ask whether the goal states its value (``is: <value>``) or which question's
answer it is (``ask: <sub-goal>``), solving sub-goals recursively (depth-limited, cycles
refused); then call the tool with the bare values and phrase the answer from its reply.
"""

from __future__ import annotations

from llmvm_ray.agents import prompts as P
from llmvm_ray.agents.base import Agent, GiveUp


class BackwardAgent(Agent):
    name = "backward"

    async def solve(self, question: str) -> str | None:
        self._facts: list[P.Fact] = []
        return await self.goal(question, 0, ())

    async def goal(self, goal: str, depth: int, ancestors: tuple[str, ...]) -> str | None:
        if depth > self.config.max_depth:
            raise GiveUp(f"depth_limit: deeper than {self.config.max_depth} sub-goals")
        if goal.strip().lower() in ancestors:
            raise GiveUp(f"cycle: sub-goal repeats an ancestor: {goal}")
        choice = await self.pick(goal, depth)
        if choice is None:
            raise GiveUp(f"no_valid_tool: the model picked no valid tool for: {goal}")
        if choice in (P.MEMORY_TOOL, P.NO_TOOL):
            return await self.recall(goal, self._facts, depth)
        tool = self.tool(choice)
        values: dict[str, str] = {}
        for name in tool.dynamic_params:
            text = await self.ask("param", P.param_context(tool), P.param_prompt(goal, name))
            parsed = P.parse_param(text)
            self.trace.event("param", depth, goal, tool=choice, param=name, raw=text.strip())
            if parsed is None:
                raise GiveUp(f"bad_param: no value or sub-goal for '{name}'")
            kind, value = parsed
            if kind == "ask":
                self.trace.sub_questions.append(value)
                self.trace.event("subgoal", depth, goal, param=name, subgoal=value)
                answer = await self.goal(value, depth + 1, (*ancestors, goal.strip().lower()))
                if answer is None:
                    raise GiveUp(f"unanswered sub-goal: {value}")
                self._facts.append((value, answer))
                value = answer
            values[name] = value
        reply = await self.call_tool(choice, values)
        if reply is None:
            raise GiveUp(f"tool_failed: {self.trace.tool_calls[-1].error}")
        return await self.answer_from_reply(goal, reply, depth)
