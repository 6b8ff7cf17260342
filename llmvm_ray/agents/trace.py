"""What an agent run returns: the answer and the full trace of how it got there.

A run is auditable and replayable from its trace alone: every event in order (sub-questions,
tool picks, tool inputs and replies, answers) with its depth, and every model call with its
step, context task id, prompt, completion and who served it (teacher or student), and every
tool call with its values, status and (truncated) reply, each with its timing.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, Field

AgentName = Literal["rebel", "backward", "flat"]


class ModelCallRecord(BaseModel):
    step: str
    prompt: str
    completion: str | None = None
    served_by: str | None = None
    task_id: str | None = None
    model: str | None = None
    temperature: float = 0.0
    latency_ms: float = 0.0
    error: str | None = None


class ToolCallRecord(BaseModel):
    tool: int = Field(description="1-based index of the tool in the run's tool list.")
    description: str
    url: str
    method: str
    inputs: dict[str, Any]
    status: int | None = None
    reply: str | None = Field(None, description="The reply as shown to the model (truncated).")
    error: str | None = Field(None, description="Why the call gave no usable reply.")
    latency_ms: float = 0.0


class TraceEvent(BaseModel):
    kind: str  # split | memory | pick | input | tool | answer | subgoal | give_up | ...
    depth: int = 0
    question: str
    detail: dict[str, Any] = Field(default_factory=dict)
    at_ms: float = Field(0.0, description="Milliseconds since the run started.")


class AgentResult(BaseModel):
    agent: AgentName
    question: str
    answer: str
    status: Literal["answered", "dont_know"]
    reason: str | None = Field(None, description="Why the agent does not know, when it doesn't.")
    sub_questions: list[str] = Field(default_factory=list)
    events: list[TraceEvent] = Field(default_factory=list)
    model_calls: list[ModelCallRecord] = Field(default_factory=list)
    tool_calls: list[ToolCallRecord] = Field(default_factory=list)
    latency_ms: float = 0.0

    @property
    def teacher_calls(self) -> int:
        return sum(1 for c in self.model_calls if c.served_by == "teacher")


class Trace:
    """The mutable recorder a run writes into; ``result`` freezes it."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.events: list[TraceEvent] = []
        self.model_calls: list[ModelCallRecord] = []
        self.tool_calls: list[ToolCallRecord] = []
        self.sub_questions: list[str] = []

    def elapsed_ms(self) -> float:
        return round((time.perf_counter() - self.started) * 1000, 3)

    def event(self, kind: str, depth: int, question: str, **detail: Any) -> None:
        self.events.append(
            TraceEvent(
                kind=kind, depth=depth, question=question, detail=detail, at_ms=self.elapsed_ms()
            )
        )

    def result(
        self, agent: AgentName, question: str, answer: str | None, reason: str | None
    ) -> AgentResult:
        from llmvm_ray.agents.prompts import DONT_KNOW

        known = answer is not None and answer.strip() != ""
        return AgentResult(
            agent=agent,
            question=question,
            answer=answer.strip() if known else DONT_KNOW,
            status="answered" if known else "dont_know",
            reason=None if known else (reason or "no answer"),
            sub_questions=list(self.sub_questions),
            events=list(self.events),
            model_calls=list(self.model_calls),
            tool_calls=list(self.tool_calls),
            latency_ms=self.elapsed_ms(),
        )
