"""One synthesis request (a *unit*) end to end: k-shot prompt, teacher call, parse, validate.

A unit is planned deterministically from (run seed, task, unit index): which k seeds it
shows and which prompt variant it uses, so a resumed run re-plans exactly the units it had
not finished. Running a unit makes at most ``1 + request_retries`` attempts: a teacher error
(timeout, 429, 5xx, connection) or an answer with no valid record is retried after an
exponential backoff with jitter; after the last attempt the unit fails with its error
recorded. Nothing here loops without a bound, and nothing here knows about Ray: a worker
actor, the optimizer or a test runs a ``Synthesizer`` the same way.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llmvm_ray.config import Config, SynthesisConfig
from llmvm_ray.engine.types import GuidedSpec, SamplingParams
from llmvm_ray.synthesis import encoding as enc
from llmvm_ray.synthesis.accounting import Stats
from llmvm_ray.synthesis.ratelimit import RateLimiter
from llmvm_ray.synthesis.records import SOURCE, Seed, validate
from llmvm_ray.synthesis.templates import TemplateSet, resolve_family
from llmvm_ray.teachers import (
    Teacher,
    TeacherCall,
    TeacherError,
    TeacherTimeout,
    TeacherUnavailable,
)

MAX_ERRORS_PER_UNIT = 20
RAW_CHARS = 2000


@dataclass(frozen=True)
class TaskInput:
    """What to synthesize for: a task key (names its rows and paths), its stable context
    (the instruction the teacher is told) and its seed examples."""

    task: str
    context: str
    seeds: tuple[Seed, ...]


@dataclass(frozen=True)
class UnitPlan:
    task: str
    unit: int
    seed_ids: tuple[str, ...]
    variant: int


@dataclass
class UnitResult:
    task: str
    unit: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    stats: Stats = field(default_factory=Stats)
    failed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "unit": self.unit,
            "rows": self.rows,
            "errors": self.errors,
            "stats": self.stats.to_dict(),
            "failed": self.failed,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UnitResult:
        return cls(
            task=data["task"],
            unit=data["unit"],
            rows=data["rows"],
            errors=data["errors"],
            stats=Stats.from_dict(data["stats"]),
            failed=data.get("failed", False),
        )


def _int_seed(*parts: Any) -> int:
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def error_kind(exc: BaseException) -> str:
    """A short, countable name for a teacher failure."""
    if isinstance(exc, TeacherTimeout | asyncio.TimeoutError | TimeoutError):
        return "timeout"
    status = getattr(exc.__cause__, "status_code", None)
    if status == 429:
        return "rate_limited"
    if isinstance(exc, TeacherUnavailable):
        return "unavailable"
    if isinstance(status, int):
        return f"http_{status}"
    return "teacher_error"


def resolve_encoding(config: Config) -> enc.Encoding:
    """``synthesis.encoding``, with ``auto`` resolved (see ``Synthesizer.for_config``)."""
    chosen = config.synthesis.encoding
    if chosen == "auto":
        return "guided_json" if config.teacher.base_url is None else "json"
    return chosen


class Synthesizer:
    def __init__(
        self,
        settings: SynthesisConfig,
        teacher: Teacher,
        *,
        encoding: enc.Encoding,
        templates: TemplateSet,
        run_id: str,
        limiter: RateLimiter | None = None,
        answer_call: Callable[[TaskInput, str, int], TeacherCall] | None = None,
    ) -> None:
        self.settings = settings
        self.teacher = teacher
        self.encoding = encoding
        self.templates = templates
        self.run_id = run_id
        self.limiter = limiter or RateLimiter(settings.max_in_flight, settings.requests_per_s)
        # How a new prompt is answered when ``answer_with_teacher`` is on (the optimizer
        # passes the task's own generation settings).
        self.answer_call = answer_call or self.default_answer_call
        self._jitter = random.Random(_int_seed(settings.seed, run_id, "jitter"))

    @classmethod
    def for_config(
        cls,
        config: Config,
        teacher: Teacher,
        *,
        run_id: str,
        encoding: enc.Encoding | None = None,
        limiter: RateLimiter | None = None,
        answer_call: Callable[[TaskInput, str, int], TeacherCall] | None = None,
    ) -> Synthesizer:
        """The synthesizer a config describes: its settings, its encoding (``auto``: guided
        JSON when this app hosts the teacher, which then always parses, else plain JSON) and
        its template family (``auto`` follows ``teacher.api``)."""
        s = config.synthesis
        family = resolve_family(s.family, config.teacher.api)
        return cls(
            s,
            teacher,
            encoding=encoding or resolve_encoding(config),
            templates=TemplateSet.build(family, s.prompt_variants or None, s.system_prompt),
            run_id=run_id,
            limiter=limiter,
            answer_call=answer_call,
        )

    # -- planning -----------------------------------------------------------------------------

    def plan(self, task: TaskInput, unit: int) -> UnitPlan:
        rng = random.Random(_int_seed(self.settings.seed, task.task, unit))
        k = min(self.settings.seed_examples, len(task.seeds))
        shown = rng.sample(range(len(task.seeds)), k)
        return UnitPlan(
            task=task.task,
            unit=unit,
            seed_ids=tuple(task.seeds[i].id for i in shown),
            variant=(self.settings.seed + unit) % len(self.templates.variants),
        )

    def call(self, task: TaskInput, plan: UnitPlan, attempt: int) -> tuple[TeacherCall, str]:
        """The teacher request of one attempt and the template name it used."""
        by_id = {s.id: s for s in task.seeds}
        shots = [
            {"prompt": by_id[i].prompt, "completion": by_id[i].completion} for i in plan.seed_ids
        ]
        s = self.settings
        n = s.seed_batch_size
        delim = s.example_delim
        rendered = self.templates.render(
            plan.variant,
            task.context,
            enc.format_examples(self.encoding, shots, delim),
            n,
            enc.format_instruction(self.encoding, delim),
        )
        guided = (
            GuidedSpec(json_schema=enc.json_schema(n, s.max_prompt_chars, s.max_completion_chars))
            if self.encoding == "guided_json"
            else None
        )
        params = SamplingParams(
            max_tokens=s.max_tokens,
            temperature=s.temperature,
            seed=_int_seed(s.seed, self.run_id, plan.task, plan.unit, attempt),
            guided=guided,
        )
        call = TeacherCall(context=rendered.system, prompt=rendered.prompt, params=params)
        return call, rendered.template

    # -- running ------------------------------------------------------------------------------

    async def run_unit(self, task: TaskInput, plan: UnitPlan) -> UnitResult:
        s = self.settings
        result = UnitResult(task=plan.task, unit=plan.unit)
        stats = result.stats
        stats.requests = 1
        seed_prompts = {seed.prompt.strip() for seed in task.seeds}
        last_error = ""
        for attempt in range(s.request_retries + 1):
            if attempt:
                stats.retries += 1
                delay = min(s.backoff_max_s, s.backoff_s * 2 ** (attempt - 1))
                await asyncio.sleep(delay * self._jitter.uniform(0.5, 1.0))
            stats.attempts += 1
            stats.requested += s.seed_batch_size
            call, template = self.call(task, plan, attempt)
            try:
                async with self.limiter.slot():
                    answer = await asyncio.wait_for(
                        self.teacher.complete(call), timeout=s.request_timeout_s
                    )
            except (TeacherError, TimeoutError) as exc:
                kind = error_kind(exc)
                stats.errors[kind] += 1
                last_error = f"{kind}: {getattr(exc, 'message', None) or exc or type(exc).__name__}"
                self._error(result, plan, attempt, kind, last_error, "")
                continue
            parsed = enc.parse(
                answer.text,
                self.encoding,
                s.example_delim,
                truncated=answer.finish_reason == "length",
            )
            stats.generated += parsed.generated
            stats.parsed += len(parsed.records)
            stats.dropped["unparseable"] += len(parsed.failures)
            for fragment in parsed.failures:
                self._error(result, plan, attempt, "unparseable", "could not decode", fragment)
            cleans = []
            for record in parsed.records:
                clean, why = validate(
                    record,
                    delim=s.example_delim,
                    max_prompt_chars=s.max_prompt_chars,
                    max_completion_chars=s.max_completion_chars,
                    seed_prompts=seed_prompts,
                )
                if clean is None:
                    stats.dropped[f"invalid: {why}"] += 1
                    self._error(result, plan, attempt, "invalid", why or "", str(record))
                    continue
                cleans.append(clean)
            if s.answer_with_teacher and cleans:
                cleans = await self._answer(task, plan, attempt, cleans, result)
            valid = len(cleans)
            for clean in cleans:
                result.rows.append(
                    {
                        **clean,
                        "source": SOURCE,
                        "run_id": self.run_id,
                        "task": plan.task,
                        "teacher": answer.model,
                        "template": template,
                        "encoding": self.encoding,
                        "completion_by": "teacher" if s.answer_with_teacher else "synthesis",
                        "seed_ids": list(plan.seed_ids),
                        "unit": plan.unit,
                        "attempt": attempt,
                        "created_at": time.time(),
                    }
                )
            stats.valid += valid
            if valid:
                return result
            last_error = (
                "no valid example in the answer"
                if parsed.records
                else "nothing parseable in the answer"
            )
            stats.errors["no_valid_records"] += 1
            self._error(result, plan, attempt, "no_valid_records", last_error, answer.text)
        result.failed = True
        stats.failed_requests = 1
        self._error(
            result,
            plan,
            s.request_retries,
            "failed",
            f"gave up after {s.request_retries + 1} attempts; last: {last_error}",
            "",
        )
        return result

    async def _answer(
        self,
        task: TaskInput,
        plan: UnitPlan,
        attempt: int,
        cleans: list[dict[str, str]],
        result: UnitResult,
    ) -> list[dict[str, str]]:
        """Replace each generated completion with the teacher's own answer to the prompt
        (LLM-VM's later loop did this): the completion then comes from the same call a real
        request makes. A prompt the teacher fails to answer is dropped and counted."""
        s = self.settings

        async def one(i: int, clean: dict[str, str]) -> dict[str, str] | None:
            seed = _int_seed(s.seed, self.run_id, plan.task, plan.unit, attempt, "answer", i)
            call = self.answer_call(task, clean["prompt"], seed)
            try:
                async with self.limiter.slot():
                    got = await asyncio.wait_for(
                        self.teacher.complete(call), timeout=s.request_timeout_s
                    )
            except (TeacherError, TimeoutError) as exc:
                kind = error_kind(exc)
                result.stats.dropped[f"answer_failed: {kind}"] += 1
                self._error(result, plan, attempt, "answer_failed", kind, clean["prompt"])
                return None
            if not got.text.strip():
                result.stats.dropped["answer_failed: empty"] += 1
                return None
            return {"prompt": clean["prompt"], "completion": got.text}

        answered = await asyncio.gather(*(one(i, c) for i, c in enumerate(cleans)))
        return [a for a in answered if a is not None]

    def default_answer_call(self, task: TaskInput, prompt: str, seed: int) -> TeacherCall:
        """The task's own teacher call for ``prompt``: its context, greedy decoding."""
        params = SamplingParams(
            max_tokens=self.settings.answer_max_tokens, temperature=0.0, seed=seed
        )
        return TeacherCall(context=task.context, prompt=prompt, params=params)

    def _error(
        self, result: UnitResult, plan: UnitPlan, attempt: int, kind: str, error: str, raw: str
    ) -> None:
        if len(result.errors) >= MAX_ERRORS_PER_UNIT and kind != "failed":
            return
        result.errors.append(
            {
                "run_id": self.run_id,
                "task": plan.task,
                "unit": plan.unit,
                "attempt": attempt,
                "kind": kind,
                "error": error,
                "raw": raw[:RAW_CHARS],
            }
        )
