"""Control flow of REBEL, backward chaining and FLAT (scripted model, real tool server).

The "right" script is the decision-step data of the question (``bench.steps``), so these
tests also pin that the agents send byte-for-byte the prompts the step models train on.
"""

from __future__ import annotations

import asyncio

import pytest

from llmvm_ray.agents import prompts as P
from llmvm_ray.agents.bench.steps import question_steps
from llmvm_ray.agents.registry import AGENTS
from llmvm_ray.config import AgentsConfig
from tests.agents.scripted import ScriptedModel


def _question(kb, category: str):
    return next(q for q in kb.questions if q.category == category)


def _run(agent_name, model, tools, question, **config):
    # The knowledge-tool server listens on loopback: a private address, allowed here.
    config = {"allow_private_networks": True, **config}
    agent = AGENTS[agent_name](model, tools, AgentsConfig(**config))

    async def go():
        try:
            return await agent.run(question)
        finally:
            await agent.caller.aclose()

    return asyncio.run(go())


def _right_script(q) -> dict[str, str]:
    return dict(question_steps(q).values())


@pytest.mark.parametrize("agent", ["flat", "rebel", "backward"])
@pytest.mark.parametrize("category", ["birthplace_capital", "birthdate_uspresident"])
def test_agent_answers_two_hop_question_with_full_trace(kb, knowledge, agent, category):
    q = _question(kb, category)
    model = ScriptedModel(_right_script(q))
    result = _run(agent, model, knowledge.tools(), q.question)
    assert result.status == "answered", result.reason
    assert result.answer == q.a2
    assert q.answers[0] == q.a2
    # Two real lookups, first the person, then the second hop with the first answer.
    assert [c.inputs for c in result.tool_calls] == [{q.key1: q.person}, {q.key2: q.a1}]
    assert all(c.status == 200 and c.error is None for c in result.tool_calls)
    assert q.q1 in result.sub_questions
    assert len(result.model_calls) == len(model.calls)
    assert all(c.served_by == "teacher" and c.completion for c in result.model_calls)
    kinds = {e.kind for e in result.events}
    assert {"pick", "answer"} <= kinds
    assert result.latency_ms > 0
    # Every step is its own task: contexts depend on the step (and tool), not the question.
    contexts = {(c.step, c.context) for c in model.calls}
    assert len({s for s, _ in contexts}) >= 3


def test_flat_input_retries_rise_in_temperature_then_dont_know(kb, knowledge):
    q = _question(kb, "birthplace_capital")
    script = _right_script(q)
    script[P.input_prompt(q.q1, [q.key1])] = "not json at all"
    model = ScriptedModel(script)
    result = _run("flat", model, knowledge.tools(), q.question, input_retries=3)
    assert result.status == "dont_know"
    assert result.reason.startswith("no_valid_input")
    temps = [c.temperature for c in model.calls if c.step == "input"]
    assert temps == sorted(temps) and len(temps) == 3 and temps[0] == 0 < temps[-1]
    assert result.tool_calls == []


@pytest.mark.parametrize("agent", ["flat", "rebel", "backward"])
def test_model_that_never_picks_a_valid_tool(kb, knowledge, agent):
    q = _question(kb, "birthplace_capital")
    script = _right_script(q)

    def junk(call):
        return "the best tool is the hammer" if call.step == "pick" else "99"

    for prompt in [p for p in script if p.endswith("Tool:")]:
        del script[prompt]
    result = _run(agent, ScriptedModel(script, junk), knowledge.tools(), q.question)
    assert result.status == "dont_know" and result.reason.startswith("no_valid_tool")
    assert result.answer == P.DONT_KNOW
    assert any(e.kind == "give_up" for e in result.events)


def test_rebel_endless_splitting_stops_at_depth_and_step_limits(kb, knowledge):
    def always_split(call):
        if call.step == "split":
            question = call.prompt.split("Question: ", 1)[1].split("\n")[0]
            return f"Who first asked: {question} {P.SEP} Why was it: {question}"
        return "-1" if call.step == "pick" else "x"

    model = ScriptedModel(fallback=always_split)
    result = _run("rebel", model, knowledge.tools(), "Why?", max_depth=3, max_model_calls=200)
    depths = [e.depth for e in result.events]
    assert max(depths) == 3  # leaves at the depth limit do not split again
    assert result.status == "answered"  # every leaf "answered" from memory
    limited = _run(
        "rebel",
        ScriptedModel(fallback=always_split),
        knowledge.tools(),
        "Why?",
        max_depth=3,
        max_model_calls=10,
    )
    assert limited.status == "dont_know" and limited.reason.startswith("step_limit")
    assert len(limited.model_calls) == 10


def test_backward_cycle_and_depth_are_refused(kb, knowledge):
    def loop(call):
        if call.step == "pick":
            return "1"
        return f"{P.ASK} the same goal again" if call.step == "param" else "x"

    result = _run("backward", ScriptedModel(fallback=loop), knowledge.tools(), "Who?")
    assert result.status == "dont_know"
    assert result.reason.startswith(("cycle", "depth_limit"))


def test_unreachable_tool_gives_dont_know_with_trace(kb):
    from llmvm_ray.agents.bench.knowledge import tool_specs

    q = _question(kb, "birthplace_capital")
    tools = tool_specs("http://127.0.0.1:9")  # discard port: nothing answers
    for agent in ("flat", "rebel", "backward"):
        result = _run(agent, ScriptedModel(_right_script(q)), tools, q.question, input_retries=2)
        assert result.status == "dont_know", agent
        assert result.reason.startswith(("tool_failed", "no_valid_input")), result.reason
        assert result.tool_calls and "unreachable" in result.tool_calls[0].error


def test_tool_call_limit(kb, knowledge):
    q = _question(kb, "birthplace_capital")
    result = _run(
        "flat", ScriptedModel(_right_script(q)), knowledge.tools(), q.question, max_tool_calls=1
    )
    assert result.status == "dont_know" and result.reason.startswith("tool_limit")
    assert len(result.tool_calls) == 1


@pytest.mark.parametrize("agent", ["flat", "rebel", "backward"])
def test_hanging_or_failing_model_never_hangs_the_run(knowledge, agent):
    hung = _run(agent, ScriptedModel(hang=True), knowledge.tools(), "Q?", model_timeout_s=0.2)
    assert hung.status == "dont_know" and hung.reason.startswith("model_timeout")
    overall = _run(agent, ScriptedModel(hang=True), knowledge.tools(), "Q?", run_timeout_s=0.2)
    assert overall.status == "dont_know" and overall.reason.startswith("run_timeout")
    failed = _run(agent, ScriptedModel(fail=True), knowledge.tools(), "Q?")
    assert failed.status == "dont_know" and failed.reason.startswith("model_error")
    assert failed.model_calls[0].error


def test_sub_question_references_are_resolved():
    assert (
        P.resolve_refs("capital of #1 and #2, not #3", ["A", "B"]) == "capital of A and B, not #3"
    )
    assert P.parse_split(" a ||| A ||| b |||  ", 4) == ["a", "b"]
    assert P.parse_pick(" 3</ANSWER>", 5) == 3 and P.parse_pick("7", 5) is None
    assert P.parse_pick("-1", 5) == -1 and P.parse_pick("none", 5) is None
    assert P.parse_input('x {"a": "1", "b": 2} y', ["a", "b"]) == {"a": "1", "b": 2}
    assert P.parse_input('{"a": ""}', ["a"]) is None and P.parse_input("{", ["a"]) is None
    assert P.parse_param("ask: Who?") == ("ask", "Who?") and P.parse_param("is:") is None


def test_unreachable_model_endpoint_is_dont_know(knowledge):
    from llmvm_ray.agents.api import ModelSpec, run_agent

    for spec in (
        ModelSpec(kind="service", url="http://127.0.0.1:9"),
        ModelSpec(kind="openai", url="http://127.0.0.1:9/v1", model="m"),
    ):
        result = run_agent("Q?", knowledge.tools(), agent="flat", model=spec)
        assert result.status == "dont_know" and result.reason.startswith("model_error")
