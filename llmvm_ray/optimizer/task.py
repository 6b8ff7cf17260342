"""What makes two requests the same task.

A task is everything that changes what a correct answer looks like: the tenant (whose data
it is), the stable context, the teacher and student models, and the generation settings that
change outputs (``temperature``, ``top_p``, ``max_tokens``, ``stop`` and the guided-output
constraint). The per-request ``seed`` and ``prompt`` are not part of it: they vary within a
task. The id is a hash of a canonical JSON form, so every replica computes the same id.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

from llmvm_ray.engine.types import GuidedSpec, SamplingParams


@dataclass(frozen=True)
class TaskSpec:
    tenant: str
    context: str
    teacher: str
    student: str
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    guided: GuidedSpec | None = None

    @classmethod
    def of(
        cls, tenant: str, context: str, teacher: str, student: str, params: SamplingParams
    ) -> TaskSpec:
        """The task a call with these generation settings belongs to."""
        return cls(
            tenant=tenant,
            context=context,
            teacher=teacher,
            student=student,
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            stop=params.stop,
            guided=params.guided,
        )

    def sampling(self, seed: int | None) -> SamplingParams:
        """The task's generation settings for one call (gate, synthesis answers). Its
        ``max_tokens`` is a cap: the task's own requests were accepted with it."""
        return SamplingParams(
            max_tokens=self.max_tokens,
            fit_max_tokens=True,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=self.stop,
            seed=seed,
            guided=self.guided,
        )

    @property
    def task_id(self) -> str:
        data = dataclasses.asdict(self)
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
        return "task-" + hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TaskSpec:
        guided = data.get("guided")
        if isinstance(guided, dict):
            guided = GuidedSpec(
                **{k: (tuple(v) if k == "choices" and v else v) for k, v in guided.items()}
            )
        return cls(**{**data, "stop": tuple(data.get("stop") or ()), "guided": guided})


def tenant_of(api_key: str | None) -> str:
    """A stable, non-reversible tenant id for an API key (``default`` without auth).

    The key itself is never stored: only this hash appears in paths, records and logs.
    """
    if not api_key:
        return "default"
    return "t-" + hashlib.sha256(api_key.encode()).hexdigest()[:16]
