"""Where every example went: requested → generated → parsed → valid → unique → kept.

- requested: examples asked of the teacher (requests × examples per request)
- generated: records the teacher wrote, as far as the parser can tell
- parsed: records that decoded into a prompt and a completion
- valid: parsed records that passed validation (``records.validate``)
- unique: valid records left after dedup (exact, MinHash, embedding)
- kept: unique records written (at most the target)

Plus request-level counts (requests, retries, failed requests, teacher errors by kind) and
why each dropped record was dropped. ``Stats`` add up, so a run's totals are the sum of its
tasks' stats and a worker's partial counts merge into the driver's.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

STAGES = ("requested", "generated", "parsed", "valid", "unique", "kept")


@dataclass
class Stats:
    requested: int = 0
    generated: int = 0
    parsed: int = 0
    valid: int = 0
    unique: int = 0
    kept: int = 0
    requests: int = 0
    attempts: int = 0
    retries: int = 0
    failed_requests: int = 0
    errors: Counter = field(default_factory=Counter)
    dropped: Counter = field(default_factory=Counter)

    def add(self, other: Stats) -> Stats:
        for name in (*STAGES, "requests", "attempts", "retries", "failed_requests"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.errors.update(other.errors)
        self.dropped.update(other.dropped)
        return self

    @property
    def parse_rate(self) -> float | None:
        """Share of generated records that decoded (None before any output)."""
        return self.parsed / self.generated if self.generated else None

    def to_dict(self) -> dict[str, Any]:
        return {
            **{name: getattr(self, name) for name in STAGES},
            "requests": self.requests,
            "attempts": self.attempts,
            "retries": self.retries,
            "failed_requests": self.failed_requests,
            "parse_rate": self.parse_rate,
            "errors": dict(self.errors),
            "dropped": dict(self.dropped),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Stats:
        known = {k: data[k] for k in (*STAGES, "requests", "attempts", "retries") if k in data}
        return cls(
            **known,
            failed_requests=data.get("failed_requests", 0),
            errors=Counter(data.get("errors", {})),
            dropped=Counter(data.get("dropped", {})),
        )

    def line(self) -> str:
        """One log line: the funnel and the request counts."""
        funnel = " → ".join(f"{name} {getattr(self, name)}" for name in STAGES)
        return (
            f"{funnel} | requests {self.requests} (retries {self.retries}, failed "
            f"{self.failed_requests})"
        )


@dataclass
class Outcome:
    """The result of a run or of one task in it: stats, whether the target was met, why not."""

    target: int
    stats: Stats
    stop_reason: str

    @property
    def reached(self) -> bool:
        return self.stats.kept >= self.target

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "reached": self.reached,
            "stop_reason": self.stop_reason,
            **self.stats.to_dict(),
        }
