"""Drive units until each task has its target of kept examples or its budget is spent.

Works in waves: for every unfinished task, plan as many units as its remaining target needs
(examples per request each; at most ``WAVE_FACTOR × max_in_flight`` per task), run them all
(through any executor: in-process or the worker pool), then absorb the results in (task,
unit) order: save each unit (``UnitStore``), dedup its rows against the task's existing rows
and everything kept so far, keep up to the target.
A task stops when it reaches its target or has made ``attempt_budget × target / batch``
requests; then its ``Outcome`` says which, and why (the biggest losses and teacher errors).

Resuming: units already saved are replayed (in unit order) before anything is requested, and
only units never saved are planned, so a resumed run neither repeats nor loses a unit.
Each unit is saved as soon as it finishes (not at the end of its wave), so an interrupted
run loses at most the requests in flight.

Stopping: ``should_stop`` (e.g. set by a job's SIGTERM handler) is polled while a wave runs;
when it turns true the wave is cancelled, the units finished so far are absorbed (they are
already saved) and the result says ``stopped``: running again resumes from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from llmvm_ray.synthesis.accounting import Outcome, Stats
from llmvm_ray.synthesis.dedup import Deduper
from llmvm_ray.synthesis.synthesizer import Synthesizer, TaskInput, UnitPlan, UnitResult

logger = logging.getLogger(__name__)

WAVE_FACTOR = 4
STOP_POLL_S = 0.1  # how often a running wave checks ``should_stop``
Work = list[tuple[TaskInput, UnitPlan]]
Execute = Callable[[Work, Callable[[UnitResult], None]], Awaitable[list[UnitResult]]]


class UnitStore(Protocol):
    def load(self, task: str) -> dict[int, UnitResult]: ...

    def save(self, result: UnitResult) -> None: ...


class MemoryUnits:
    """Units kept in memory only (the optimizer's runs are short and not resumed)."""

    def __init__(self) -> None:
        self.units: dict[tuple[str, int], UnitResult] = {}

    def load(self, task: str) -> dict[int, UnitResult]:
        return {u: r for (t, u), r in self.units.items() if t == task}

    def save(self, result: UnitResult) -> None:
        self.units[(result.task, result.unit)] = result


@dataclass
class TaskRun:
    task: TaskInput
    target: int
    budget: int
    deduper: Deduper
    stats: Stats = field(default_factory=Stats)
    kept: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    done: set[int] = field(default_factory=set)
    existing: int = 0

    @property
    def finished(self) -> bool:
        return len(self.kept) >= self.target or len(self.done) >= self.budget

    def next_units(self, count: int) -> list[int]:
        """The lowest unit indices never run (holes left by an interrupted run first)."""
        out, u = [], 0
        while len(out) < count:
            if u not in self.done:
                out.append(u)
            u += 1
        return out

    def absorb(self, result: UnitResult) -> None:
        self.done.add(result.unit)
        self.stats.add(result.stats)
        self.errors.extend(result.errors)
        unique, dropped = self.deduper.filter(result.rows)
        self.stats.unique += len(unique)
        for _, why in dropped:
            self.stats.dropped[why] += 1
        for row in unique:
            if len(self.kept) < self.target:
                self.kept.append(dict(row))
                self.stats.kept += 1
            else:
                self.stats.dropped["over_target"] += 1

    def outcome(self) -> Outcome:
        if len(self.kept) >= self.target:
            reason = f"target reached: {len(self.kept)} kept"
        else:
            losses = ", ".join(f"{k} {v}" for k, v in self.stats.dropped.most_common(3))
            errors = ", ".join(f"{k} {v}" for k, v in self.stats.errors.most_common(3))
            reason = (
                f"attempt budget spent: {len(self.done)} of {self.budget} requests made, "
                f"{len(self.kept)} of {self.target} kept"
                + (f"; lost to {losses}" if losses else "")
                + (f"; teacher errors {errors}" if errors else "")
            )
        return Outcome(self.target, self.stats, reason)


@dataclass
class RunResult:
    tasks: dict[str, TaskRun]
    stopped: bool = False  # asked to stop before every task finished

    def rows(self) -> list[dict[str, Any]]:
        return [row for t in self.tasks.values() for row in t.kept]

    def errors(self) -> list[dict[str, Any]]:
        return [e for t in self.tasks.values() for e in t.errors]

    def totals(self) -> Stats:
        total = Stats()
        for t in self.tasks.values():
            total.add(t.stats)
        return total

    def report(self) -> dict[str, Any]:
        outcomes = {k: t.outcome().to_dict() for k, t in self.tasks.items()}
        return {
            "reached": all(o["reached"] for o in outcomes.values()),
            "stopped": self.stopped,
            "totals": self.totals().to_dict(),
            "tasks": outcomes,
        }


def budget_for(target: int, batch: int, factor: float) -> int:
    return max(1, math.ceil(math.ceil(target / batch) * factor))


async def drive(
    tasks: Sequence[TaskInput],
    target: int,
    synthesizer: Synthesizer,
    execute: Execute,
    make_deduper: Callable[[], Deduper],
    *,
    existing: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    units: UnitStore | None = None,
    on_progress: Callable[[UnitResult], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> RunResult:
    s = synthesizer.settings
    units = units or MemoryUnits()
    run = RunResult(tasks={})
    for task in tasks:
        tr = TaskRun(
            task=task,
            target=target,
            budget=budget_for(target, s.seed_batch_size, s.attempt_budget),
            deduper=make_deduper(),
        )
        tr.existing = tr.deduper.seen((existing or {}).get(task.task, ()))
        for _, saved in sorted(units.load(task.task).items()):
            tr.absorb(saved)
        run.tasks[task.task] = tr
    last_log = time.monotonic()
    # Waves of a few times the in-flight limit: stats, saved progress and the stop decision
    # stay current on big runs, and a target met early does not leave a huge wave running.
    wave_cap = WAVE_FACTOR * s.max_in_flight

    finished: list[UnitResult] = []

    def done_one(result: UnitResult) -> None:
        nonlocal last_log
        units.save(result)  # durable at once: a stop or a crash loses only what is in flight
        finished.append(result)
        if time.monotonic() - last_log >= s.stats_interval_s:
            last_log = time.monotonic()
            logger.info("synthesis %s: %s", synthesizer.run_id, run.totals().line())
        if on_progress is not None:
            on_progress(result)

    while not (should_stop and should_stop()):
        work: Work = []
        for tr in run.tasks.values():
            if tr.finished:
                continue
            need = math.ceil((tr.target - len(tr.kept)) / s.seed_batch_size)
            count = min(need, tr.budget - len(tr.done), wave_cap)
            work += [(tr.task, synthesizer.plan(tr.task, u)) for u in tr.next_units(count)]
        if not work:
            break
        finished.clear()
        complete = await _wave(execute(work, done_one), should_stop)
        for result in sorted(finished, key=lambda r: (r.task, r.unit)):
            run.tasks[result.task].absorb(result)
        if not complete:
            break
        logger.info("synthesis %s wave done: %s", synthesizer.run_id, run.totals().line())
    run.stopped = any(not tr.finished for tr in run.tasks.values())
    if run.stopped:
        logger.info("synthesis %s stopped: finished units are saved", synthesizer.run_id)
    for key, tr in run.tasks.items():
        logger.info("synthesis %s task %s: %s", synthesizer.run_id, key, tr.outcome().stop_reason)
    return run


async def _wave(running: Awaitable[list[UnitResult]], should_stop) -> bool:
    """Await a wave; cancel it when ``should_stop`` turns true. True if it completed."""
    if should_stop is None:
        await running
        return True
    task = asyncio.ensure_future(running)
    while not task.done():
        await asyncio.wait({task}, timeout=STOP_POLL_S)
        if should_stop() and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return False
    task.result()  # an executor's own failure propagates
    return True


def local_executor(synthesizer: Synthesizer) -> Execute:
    """Run units in this process's event loop (the synthesizer's limiter bounds them)."""

    async def execute(work: Work, done: Callable[[UnitResult], None]) -> list[UnitResult]:
        async def one(task: TaskInput, plan: UnitPlan) -> UnitResult:
            result = await synthesizer.run_unit(task, plan)
            done(result)
            return result

        return list(await asyncio.gather(*(one(t, p) for t, p in work)))

    return execute
