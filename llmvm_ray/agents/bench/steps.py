"""Decision-step training examples (dynamic prompt → completion), FLAT-style.

From each multi-hop question of the data set (its Q1/Q2 structure gives the decomposition:
"the capital of the birthplace of X" = Q1 "birthplace of X" then Q2 "capital of #1") this
derives every decision the three agents take on it — split, tool pick, tool input, answer
from the reply, final answer, memory check and recall, parameter sub-goals — in exactly the
prompts the agents send (``prompts.py``). ``flat_split_questions.jsonl`` and
``flat_use_memory.jsonl`` (LLM-VM's FLAT data) add general split and memory examples.
Completions carry no leading space; ``Task.format_completion`` adds it.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from pathlib import Path

from llmvm_ray.agents import prompts as P
from llmvm_ray.agents.bench.knowledge import DATA_DIR, Question, tool_index

DEFAULT_FLAT_DIR = DATA_DIR

Example = tuple[str, str]


def _reply(value: str) -> str:
    return P.reply_text({"result": value}, 600)


def question_steps(q: Question) -> dict[str, Example]:
    """Every decision step on ``q``, by kind."""
    sub2 = q.q2.replace(q.a1, "#1")
    t1, t2 = tool_index(q.tool1), tool_index(q.tool2)
    f1, f2 = (q.q1, q.a1), (q.q2, q.a2)
    return {
        "split": (P.split_prompt(q.question), f"{q.q1} {P.SEP} {sub2}"),
        "split_q1": (P.split_prompt(q.q1), q.q1),
        "split_q2": (P.split_prompt(q.q2), q.q2),
        "pick_q1": (P.pick_prompt(q.q1), str(t1)),
        "pick_q2": (P.pick_prompt(q.q2), str(t2)),
        "pick": (P.pick_prompt(q.question), str(t2)),
        "input_q1": (P.input_prompt(q.q1, [q.key1]), P.format_input({q.key1: q.person})),
        "input_q2": (P.input_prompt(q.q2, [q.key2]), P.format_input({q.key2: q.a1})),
        "reply_q1": (P.reply_prompt(q.q1, _reply(q.a1)), q.a1),
        "reply_q2": (P.reply_prompt(q.q2, _reply(q.a2)), q.a2),
        "reply": (P.reply_prompt(q.question, _reply(q.a2)), q.a2),
        "final": (P.final_prompt(q.question, [f1, f2]), q.a2),
        "memory_no": (P.memory_prompt(q.q2, [f1]), "no"),
        "memory_yes": (P.memory_prompt(q.q1, [f1]), "yes"),
        "recall": (P.recall_prompt(q.q1, [f1]), q.a1),
        "param": (P.param_prompt(q.question, q.key2), f"{P.ASK} {q.q1}"),
        "param_q1": (P.param_prompt(q.q1, q.key1), f"{P.IS} {q.person}"),
        "param_q2": (P.param_prompt(q.q2, q.key2), f"{P.IS} {q.a1}"),
    }


# The whole-question split and the copying steps are the hardest: drawn more often.
KIND_WEIGHTS = {"split": 3, "input_q1": 2, "input_q2": 2, "param": 2, "final": 2, "reply": 2}


def _tag(text: str, tag: str) -> list[str]:
    return re.findall(rf"<{tag}>(.*?)</{tag}>", text, flags=re.S)


def flat_examples(folder: Path = DEFAULT_FLAT_DIR) -> list[Example]:
    """LLM-VM's FLAT split and memory examples, rewritten into this project's prompts."""
    out: list[Example] = []
    split_file = folder / "flat_split_questions.jsonl"
    if split_file.exists():
        for line in split_file.read_text().splitlines():
            row = json.loads(line)
            questions = _tag(row["prompt"], "QUESTION")
            if not questions:
                continue
            subs = row["completion"].split("</ANSWER>")[0].split(P.SEP)
            out.append(
                (P.split_prompt(questions[-1].strip()), f" {P.SEP} ".join(s.strip() for s in subs))
            )
    memory_file = folder / "flat_use_memory.jsonl"
    if memory_file.exists():
        for line in memory_file.read_text().splitlines():
            row = json.loads(line)
            questions = _tag(row["prompt"], "QUESTION")
            answers = _tag(row["prompt"], "ANSWER")
            history = _tag(row["prompt"], "CONVERSATION-HISTORY")
            facts: list[P.Fact] = []
            if history:
                qs, ans = _tag(history[0], "QUESTION"), _tag(history[0], "ANSWER")
                facts = [(a.strip(), b.strip()) for a, b in zip(qs, ans, strict=False)]
            if questions and answers is not None:
                prompt = P.memory_prompt(questions[-1].strip(), facts)
                out.append((prompt, row["completion"].strip()))
    return out


def make_sampler(
    questions: list[Question], extra: list[Example], extra_share: float = 0.04
) -> Callable[[random.Random], Example]:
    """A sampler of (dynamic prompt, completion) pairs over the given questions."""
    kinds = list(question_steps(questions[0]))
    weights = [KIND_WEIGHTS.get(k, 1) for k in kinds]

    def sample(rng: random.Random) -> Example:
        if extra and rng.random() < extra_share:
            return rng.choice(extra)
        q = rng.choice(questions)
        kind = rng.choices(kinds, weights)[0]
        return question_steps(q)[kind]

    return sample
