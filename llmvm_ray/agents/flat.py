"""FLAT: split once, then for each sub-question pick a tool, guess its input (retried at a
rising temperature, also when the call fails), call it; answer from the sub-answers.

Its decision steps are small, fixed-format tasks: the ones LLM-VM meant to serve from small
fine-tuned models (``data/agents/flat_*.jsonl``); here each is an optimizer task.
"""

from __future__ import annotations

from llmvm_ray.agents import prompts as P
from llmvm_ray.agents.base import Agent, GiveUp


class FlatAgent(Agent):
    name = "flat"

    async def solve(self, question: str) -> str | None:
        text = await self.ask("split", P.split_context(self.tools), P.split_prompt(question))
        subs = P.parse_split(text, self.config.max_subquestions) or [question]
        self.trace.event("split", 0, question, raw=text.strip(), sub_questions=subs)
        answers: list[str] = []
        facts: list[P.Fact] = []
        for sub in subs:
            resolved = P.resolve_refs(sub, answers)
            self.trace.sub_questions.append(resolved)
            answer = await self._answer(resolved, facts)
            if not answer:
                raise GiveUp(f"unanswered sub-question: {resolved}")
            answers.append(answer)
            facts.append((resolved, answer))
        if len(subs) == 1:
            return answers[0]
        text = await self.ask("final", P.final_context(), P.final_prompt(question, facts))
        answer = P.clean_answer(text)
        self.trace.event("answer", 0, question, answer=answer, source="sub-answers")
        return answer or None

    async def _answer(self, question: str, facts: list[P.Fact]) -> str | None:
        choice = await self.pick(question, 1)
        if choice is None:
            raise GiveUp(f"no_valid_tool: the model picked no valid tool for: {question}")
        if choice in (P.MEMORY_TOOL, P.NO_TOOL):
            return await self.recall(question, facts, 1)
        error = "no valid input"
        for attempt in range(self.config.input_retries):
            values = await self.guess_once(question, choice, 1, attempt)
            if values is None:
                continue
            reply = await self.call_tool(choice, values)
            if reply is not None:
                return await self.answer_from_reply(question, reply, 1)
            error = f"tool failed: {self.trace.tool_calls[-1].error}"
        raise GiveUp(f"no_valid_input: {error} after {self.config.input_retries} tries")
