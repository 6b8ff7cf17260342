"""The decision steps' prompts: a stable context per step (the task) and a dynamic prompt.

One module so the agents and the training data for step models (``bench/steps.py``) use
byte-identical prompts. Dynamic prompts are short, line-based and end with a label and a
colon; completions are one line starting with a space (stop at ``\\n``). Contexts carry the
instructions, the tool list and a few examples in the same format, for a general LLM; a
distilled student (or a step model trained offline) sees the dynamic prompt only.

Sub-questions may refer to the answer of an earlier one as ``#1``, ``#2`` ...: the agents
substitute the answer before asking (a chain like "the capital of the birthplace of X" is
two questions, the second needing the first's answer).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from llmvm_ray.protocol import ToolSpec

SEP = "|||"
MEMORY_TOOL = 0
NO_TOOL = -1
STOP = ("\n",)

Fact = tuple[str, str]


def _facts(facts: Sequence[Fact]) -> str:
    return "".join(f"{q} {a}\n" for q, a in facts)


def tool_lines(tools: Sequence[ToolSpec]) -> str:
    return "".join(f"{i} {t.description}\n" for i, t in enumerate(tools, start=1))


# -- split -----------------------------------------------------------------------------------


def split_prompt(question: str) -> str:
    return f"Question: {question}\nSub-questions:"


def split_context(tools: Sequence[ToolSpec]) -> str:
    return (
        "Split the question into the fewest sub-questions that each need one use of one tool. "
        f"Separate them with {SEP}. A later sub-question may use an earlier answer as #1, #2. "
        "If no split is needed, repeat the question.\n"
        f"Tools:\n{tool_lines(tools)}\n"
        + split_prompt("What is the capital of the country where Ada Lovelace was born?")
        + f" In which country was Ada Lovelace born? {SEP} What is the capital of #1?\n"
        + split_prompt("What is the capital of France?")
        + " What is the capital of France?\n"
    )


def parse_split(text: str, limit: int) -> list[str]:
    seen: list[str] = []
    for part in text.split(SEP):
        part = part.strip()
        if part and part.lower() not in (s.lower() for s in seen):
            seen.append(part)
    return seen[:limit]


def resolve_refs(question: str, answers: Sequence[str]) -> str:
    """Replace ``#k`` with the k-th earlier answer (unknown references stay as they are)."""

    def sub(match: re.Match[str]) -> str:
        k = int(match.group(1))
        return answers[k - 1] if 1 <= k <= len(answers) else match.group(0)

    return re.sub(r"#(\d+)", sub, question)


# -- memory (REBEL) --------------------------------------------------------------------------


def memory_prompt(question: str, facts: Sequence[Fact]) -> str:
    return f"Facts:\n{_facts(facts)}Question: {question}\nKnown:"


def memory_context() -> str:
    return (
        "Answer yes if the facts already answer the question, otherwise no.\n"
        + memory_prompt("What is the capital of France?", [("Capital of France?", "Paris")])
        + " yes\n"
        + memory_prompt("When was Ada Lovelace born?", [])
        + " no\n"
    )


def recall_prompt(question: str, facts: Sequence[Fact]) -> str:
    return f"Facts:\n{_facts(facts)}Question: {question}\nAnswer:"


def recall_context() -> str:
    return (
        "Answer the question from the facts, with the bare answer only.\n"
        + recall_prompt("What is the capital of France?", [("Capital of France?", "Paris")])
        + " Paris\n"
    )


def parse_yes(text: str) -> bool:
    return text.strip().lower().startswith("yes")


# -- tool pick -------------------------------------------------------------------------------


def pick_prompt(question: str) -> str:
    return f"Question: {question}\nTool:"


def pick_context(tools: Sequence[ToolSpec]) -> str:
    return (
        "Which tool best answers the question? Answer with its number only; "
        f"{MEMORY_TOOL} if the question itself or known facts answer it, {NO_TOOL} if no "
        f"tool can.\nTools:\n{tool_lines(tools)}\n"
    )


def parse_pick(text: str, n_tools: int) -> int | None:
    match = re.search(r"-?\d+", text)
    if match is None:
        return None
    value = int(match.group(0))
    return value if NO_TOOL <= value <= n_tools else None


# -- tool input ------------------------------------------------------------------------------


def input_prompt(question: str, keys: Sequence[str]) -> str:
    return f"Question: {question}\nKeys: {', '.join(keys)}\nInput:"


def input_context(tool: ToolSpec) -> str:
    return (
        "Write the JSON input for the tool that answers the question: one object with "
        "exactly these keys, values taken from the question.\n"
        f"Tool: {tool.description}\nKeys: {json.dumps(tool.dynamic_params)}\n"
    )


def parse_input(text: str, keys: Sequence[str]) -> dict[str, object] | None:
    """The first JSON object in ``text`` if it has every key with a scalar value."""
    start = text.find("{")
    while start != -1:
        try:
            obj, _ = json.JSONDecoder().raw_decode(text[start:])
        except ValueError:
            start = text.find("{", start + 1)
            continue
        if isinstance(obj, dict) and all(
            k in obj and isinstance(obj[k], str | int | float) and str(obj[k]).strip() for k in keys
        ):
            return {k: obj[k] for k in keys}
        return None
    return None


def format_input(values: dict[str, object]) -> str:
    return json.dumps(values, ensure_ascii=False)


# -- answer from a tool reply ----------------------------------------------------------------


def reply_prompt(question: str, reply: str) -> str:
    return f"Question: {question}\nReply: {reply}\nAnswer:"


def reply_context() -> str:
    return (
        "Answer the question from the tool's reply, with the bare answer only.\n"
        + reply_prompt("What is the capital of France?", '{"result": "Paris"}')
        + " Paris\n"
    )


def reply_text(data: object, limit: int) -> str:
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


# -- final answer ----------------------------------------------------------------------------


def final_prompt(question: str, facts: Sequence[Fact]) -> str:
    return f"Question: {question}\nFacts:\n{_facts(facts)}Answer:"


def final_context() -> str:
    return (
        "Answer the question from the facts found for its sub-questions, with the bare "
        "answer only.\n"
        + final_prompt(
            "What is the capital of the country where Ada Lovelace was born?",
            [
                ("In which country was Ada Lovelace born?", "United Kingdom"),
                ("What is the capital of United Kingdom?", "London"),
            ],
        )
        + " London\n"
    )


# -- parameters as sub-goals (backward chaining) ---------------------------------------------

ASK = "ask:"
IS = "is:"


def param_prompt(goal: str, name: str) -> str:
    return f"Goal: {goal}\nParameter: {name}\nValue:"


def param_context(tool: ToolSpec) -> str:
    return (
        "The tool below needs the parameter. If the goal states its value, answer "
        f"'{IS} <value>'; otherwise answer '{ASK} <the question whose answer is the value>'.\n"
        f"Tool: {tool.description}\nParameters: {json.dumps(tool.dynamic_params)}\n"
    )


def parse_param(text: str) -> tuple[str, str] | None:
    """("is", value) or ("ask", sub-goal), or None when the text is neither."""
    text = text.strip()
    for tag in (IS, ASK):
        if text.lower().startswith(tag):
            rest = text[len(tag) :].strip()
            return (tag[:-1], rest) if rest else None
    return None


def clean_answer(text: str) -> str:
    return text.strip().strip('"').strip()


DONT_KNOW = "I don't know."
