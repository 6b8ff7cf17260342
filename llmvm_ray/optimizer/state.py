"""A task's durable state: its route, counters, gate history and shadow agreement.

One JSON document per task under ``storage_path/tasks/{tenant}/{task_id}/state.json``, written
atomically after every change that matters, so a restarted optimizer resumes every task where
it was (including which student adapter serves it).
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, Field

from llmvm_ray.optimizer.task import TaskSpec

MAX_EVENTS = 50


class GateResult(BaseModel):
    run_id: str
    metric: str
    score: float
    threshold: float
    examples: int
    passed: bool
    at: float = Field(default_factory=time.time)
    error: str | None = None


class TaskState(BaseModel):
    task_id: str
    tenant: str
    spec: dict[str, Any]
    created_at: float = Field(default_factory=time.time)
    route: Literal["teacher", "student"] = "teacher"
    adapter: str | None = Field(None, description="Adapter name on the student model.")
    adapter_path: str | None = None
    promoted_run: str | None = None
    examples: int = Field(0, description="Rows recorded, train and held out.")
    holdout: int = Field(0, description="Rows held out for the gate.")
    synthesized: int = 0
    trained_on: int = Field(0, description="`examples` when the last fine-tune started.")
    trained_on_before_run: int = Field(
        0, description="`trained_on` before the active run: restored if that run fails."
    )
    retry_at: float | None = Field(None, description="When a failed fine-tune may be retried.")
    active_run: str | None = None
    runs: list[str] = Field(default_factory=list)
    gates: list[GateResult] = Field(default_factory=list)
    shadow: list[int] = Field(default_factory=list, description="Rolling 1/0 agreement.")
    teacher_calls: int = 0
    student_calls: int = 0
    shadow_calls: int = 0
    fallbacks: int = Field(0, description="Student-routed calls the teacher answered instead.")
    teacher_tokens_saved: int = 0
    prompt_tokens: int = Field(0, description="Prompt tokens of answers (either route).")
    completion_tokens: int = Field(0, description="Completion tokens of answers.")
    rollbacks: int = 0
    events: list[dict[str, Any]] = Field(default_factory=list)

    def task_spec(self) -> TaskSpec:
        return TaskSpec.from_dict(self.spec)

    def event(self, kind: str, **detail: Any) -> None:
        self.events.append({"at": time.time(), "event": kind, **detail})
        del self.events[:-MAX_EVENTS]

    @property
    def agreement(self) -> float | None:
        return sum(self.shadow) / len(self.shadow) if self.shadow else None

    def summary(self) -> dict[str, Any]:
        """The public view (``/v1/tasks``)."""
        last_gate = self.gates[-1] if self.gates else None
        return {
            "id": self.task_id,
            "object": "task",
            "created": int(self.created_at),
            "context": self.spec.get("context", ""),
            "teacher": self.spec.get("teacher"),
            "student": self.spec.get("student"),
            "route": self.route,
            "adapter": self.adapter,
            "examples": {
                "recorded": self.examples,
                "held_out": self.holdout,
                "train": self.examples - self.holdout,
                "synthesized": self.synthesized,
            },
            "fine_tunes": list(self.runs),
            "active_fine_tune": self.active_run,
            "gate": last_gate.model_dump() if last_gate else None,
            "shadow_agreement": self.agreement,
            "shadow_samples": len(self.shadow),
            "calls": {
                "teacher": self.teacher_calls,
                "student": self.student_calls,
                "shadow": self.shadow_calls,
                "fallback": self.fallbacks,
            },
            "teacher_calls_saved": self.student_calls,
            "teacher_tokens_saved": self.teacher_tokens_saved,
            "tokens": {"prompt": self.prompt_tokens, "completion": self.completion_tokens},
            "rollbacks": self.rollbacks,
        }
