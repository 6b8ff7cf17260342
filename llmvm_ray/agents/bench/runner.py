"""Score an agent on the multi-hop questions: accuracy per category, cost and latency.

Questions come from the held-out people (never seen by a step model trained here) or all
people; the knowledge-tool server runs on loopback; runs go through an ``AgentPool`` of Ray
actors with whatever ``ModelSpec`` is given — the optimizing service, any OpenAI-compatible
model, or a local step model. An answer is right when it matches any alias of the data
set's answer (normalized equal, or the alias appearing as whole words in a longer answer).
"""

from __future__ import annotations

import random
import re
import statistics
import time
from collections import defaultdict
from typing import Any

from llmvm_ray.agents.bench.knowledge import KnowledgeBase, KnowledgeServer, Question, norm
from llmvm_ray.agents.model import ModelSpec
from llmvm_ray.agents.pool import AgentJob, AgentPool
from llmvm_ray.agents.trace import AgentResult
from llmvm_ray.config import AgentsConfig


def is_correct(answer: str, aliases: tuple[str, ...] | list[str]) -> bool:
    got = norm(answer).strip(" .")
    if not got:
        return False
    for alias in aliases:
        want = norm(alias).strip(" .")
        if want and (got == want or re.search(rf"(?<!\w){re.escape(want)}(?!\w)", got)):
            return True
    return False


def select_questions(
    kb: KnowledgeBase, per_category: int | None, *, heldout: bool | None = True, seed: int = 0
) -> list[Question]:
    """Up to ``per_category`` questions of each category (a seeded sample), held-out people
    only (``heldout=True``), training people only (False) or everyone (None)."""
    from llmvm_ray.agents.bench.knowledge import is_heldout

    by_category: dict[str, list[Question]] = defaultdict(list)
    for q in kb.questions:
        if heldout is None or is_heldout(q.person) == heldout:
            by_category[q.category].append(q)
    rng = random.Random(seed)
    chosen: list[Question] = []
    for category in sorted(by_category):
        items = by_category[category]
        if per_category is not None and len(items) > per_category:
            items = rng.sample(items, per_category)
        chosen.extend(items)
    return chosen


def _summary(pairs: list[tuple[Question, AgentResult]]) -> dict[str, Any]:
    n = len(pairs)
    correct = sum(is_correct(r.answer, q.answers) for q, r in pairs)
    latencies = [r.latency_ms for _, r in pairs]
    return {
        "questions": n,
        "correct": correct,
        "accuracy": round(correct / n, 4) if n else 0.0,
        "dont_know": sum(r.status == "dont_know" for _, r in pairs),
        "model_calls_per_question": round(sum(len(r.model_calls) for _, r in pairs) / n, 2),
        "tool_calls_per_question": round(sum(len(r.tool_calls) for _, r in pairs) / n, 2),
        "teacher_calls": sum(r.teacher_calls for _, r in pairs),
        "latency_ms_p50": round(statistics.median(latencies), 1) if latencies else 0.0,
        "latency_ms_mean": round(statistics.fmean(latencies), 1) if latencies else 0.0,
    }


def step_accuracy(pairs: list[tuple[Question, AgentResult]]) -> dict[str, dict[str, Any]]:
    """How often each decision step said what the data set's structure implies, over the
    calls whose prompt is one the right path would send (a diagnostic of *which* step fails;
    off-path calls, after an earlier mistake, have no reference and are not counted)."""
    from llmvm_ray.agents.bench.steps import question_steps

    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for q, r in pairs:
        expected = dict(question_steps(q).values())
        for call in r.model_calls:
            if call.prompt in expected and call.completion is not None:
                c = counts[call.step]
                c[0] += 1
                c[1] += call.completion.strip() == expected[call.prompt].strip()
    return {
        step: {"calls": n, "right": k, "accuracy": round(k / n, 4)}
        for step, (n, k) in sorted(counts.items())
    }


def evaluate(
    agent: str,
    questions: list[Question],
    model: ModelSpec,
    config: AgentsConfig,
    *,
    kb: KnowledgeBase,
    pool_size: int | None = None,
    runs_per_actor: int | None = None,
    progress: Any = None,
    keep_traces: int = 3,
) -> dict[str, Any]:
    """Run ``agent`` on ``questions`` (needs Ray) and return the report."""
    started = time.perf_counter()
    # The harness's own knowledge-tool server is on loopback, a private address; the tool
    # list is fixed here, so allowing private networks lets only that server through.
    config = config.model_copy(update={"allow_private_networks": True})
    with KnowledgeServer(kb) as server:
        tools = [t.model_dump() for t in server.tools()]
        jobs = [
            AgentJob(agent=agent, question=q.question, tools=tools, model=model) for q in questions
        ]
        pool = AgentPool(config, size=pool_size, runs_per_actor=runs_per_actor)
        try:
            results = pool.run_many(jobs, progress=progress)
        finally:
            pool.shutdown()
    pairs = list(zip(questions, results, strict=True))
    by_category: dict[str, list[tuple[Question, AgentResult]]] = defaultdict(list)
    for q, r in pairs:
        by_category[q.category].append((q, r))
    reasons: dict[str, int] = defaultdict(int)
    for _, r in pairs:
        if r.reason:
            reasons[r.reason.split(":")[0]] += 1
    wrong = [
        {
            "question": q.question,
            "expected": list(q.answers),
            "answer": r.answer,
            "reason": r.reason,
            "trace": r.model_dump(mode="json"),
        }
        for q, r in pairs
        if not is_correct(r.answer, q.answers)
    ][:keep_traces]
    return {
        "agent": agent,
        "model": model.model_dump(exclude={"api_key"}),
        "overall": _summary(pairs),
        "categories": {c: _summary(p) for c, p in sorted(by_category.items())},
        "dont_know_reasons": dict(sorted(reasons.items())),
        "step_accuracy": step_accuracy(pairs),
        "wall_s": round(time.perf_counter() - started, 1),
        "examples_wrong": wrong,
    }


def format_report(report: dict[str, Any]) -> str:
    o = report["overall"]
    lines = [
        f"agent {report['agent']}: accuracy {o['accuracy']:.1%} ({o['correct']}/{o['questions']}),"
        f" don't know {o['dont_know']}, model calls/q {o['model_calls_per_question']},"
        f" tool calls/q {o['tool_calls_per_question']}, latency p50 {o['latency_ms_p50']} ms,"
        f" wall {report['wall_s']} s",
        f"{'category':32} {'n':>4} {'acc':>7} {'dk':>4} {'model/q':>8} {'tool/q':>7} {'p50 ms':>8}",
    ]
    for name, s in report["categories"].items():
        lines.append(
            f"{name:32} {s['questions']:>4} {s['accuracy']:>7.1%} {s['dont_know']:>4} "
            f"{s['model_calls_per_question']:>8} {s['tool_calls_per_question']:>7} "
            f"{s['latency_ms_p50']:>8}"
        )
    steps = report.get("step_accuracy") or {}
    if steps:
        lines.append(
            "on-path step accuracy: "
            + ", ".join(f"{k} {v['accuracy']:.0%} ({v['calls']})" for k, v in steps.items())
        )
    if report["dont_know_reasons"]:
        lines.append(f"don't-know reasons: {report['dont_know_reasons']}")
    return "\n".join(lines)
