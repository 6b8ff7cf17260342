"""REBEL: recursive decomposition with a memory check at every node.

Each node splits its question (sub-questions near-identical to the node's own are dropped,
as in LLM-VM) and answers the sub-questions recursively up to ``max_depth``, collecting facts;
``#k`` in a sub-question is the k-th sibling's answer. A node that does not split (a leaf, or
at the depth limit) first asks whether the facts already answer it, else picks a tool (0 or
-1: answer from memory / the model's own knowledge), writes the tool's input, calls it and
answers from the (truncated) reply. A split node answers from its sub-answers.
"""

from __future__ import annotations

from difflib import SequenceMatcher

from llmvm_ray.agents import prompts as P
from llmvm_ray.agents.base import Agent, GiveUp

NEAR_IDENTICAL = 0.9


def near_identical(a: str, b: str) -> bool:
    norm_a, norm_b = " ".join(a.lower().split()), " ".join(b.lower().split())
    return SequenceMatcher(None, norm_a, norm_b).ratio() >= NEAR_IDENTICAL


class RebelAgent(Agent):
    name = "rebel"

    async def solve(self, question: str) -> str | None:
        return await self.node(question, 0, [])

    async def node(self, question: str, depth: int, facts: list[P.Fact]) -> str | None:
        if depth < self.config.max_depth:
            text = await self.ask("split", P.split_context(self.tools), P.split_prompt(question))
            subs = [
                s
                for s in P.parse_split(text, self.config.max_subquestions)
                if not near_identical(s, question)
            ]
            self.trace.event("split", depth, question, raw=text.strip(), sub_questions=subs)
            if subs:
                return await self._split_node(question, subs, depth, facts)
        return await self._leaf(question, depth, facts)

    async def _split_node(
        self, question: str, subs: list[str], depth: int, facts: list[P.Fact]
    ) -> str | None:
        answers: list[str] = []
        own: list[P.Fact] = []
        for sub in subs:
            resolved = P.resolve_refs(sub, answers)
            self.trace.sub_questions.append(resolved)
            answer = await self.node(resolved, depth + 1, facts)
            if answer is None:
                raise GiveUp(f"unanswered sub-question: {resolved}")
            answers.append(answer)
            own.append((resolved, answer))
            facts.append((resolved, answer))
        text = await self.ask("final", P.final_context(), P.final_prompt(question, own))
        answer = P.clean_answer(text)
        self.trace.event("answer", depth, question, answer=answer, source="sub-answers")
        return answer or None

    async def _leaf(self, question: str, depth: int, facts: list[P.Fact]) -> str | None:
        if facts:
            text = await self.ask("memory", P.memory_context(), P.memory_prompt(question, facts))
            known = P.parse_yes(text)
            self.trace.event("memory", depth, question, raw=text.strip(), known=known)
            if known:
                return await self.recall(question, facts, depth)
        choice = await self.pick(question, depth)
        if choice is None:
            raise GiveUp(f"no_valid_tool: the model picked no valid tool for: {question}")
        if choice in (P.MEMORY_TOOL, P.NO_TOOL):
            return await self.recall(question, facts, depth)
        values = await self.guess_once(question, choice, depth, attempt=0)
        if values is None:
            raise GiveUp(f"no_valid_input: no valid input for tool {choice}")
        reply = await self.call_tool(choice, values)
        if reply is None:
            raise GiveUp(f"tool_failed: {self.trace.tool_calls[-1].error}")
        return await self.answer_from_reply(question, reply, depth)
