"""Synthesis for one task (``/v1/complete`` with ``data_synthesis: true``), in the optimizer.

The same ``Synthesizer`` and ``drive`` loop as a batch run, in the optimizer's own event
loop (a task asks for tens of examples, not thousands: no worker pool needed), with the
task's recorded rows as seeds and as the set new rows are deduped against. The teacher is
the task's teacher: remote through ``teacher.base_url``, else the app's own replica, whose
output is then JSON-schema constrained.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from llmvm_ray.config import Config
from llmvm_ray.optimizer.task import TaskSpec
from llmvm_ray.synthesis.dedup import Deduper
from llmvm_ray.synthesis.records import load_seeds, require_seeds
from llmvm_ray.synthesis.run import drive, local_executor
from llmvm_ray.synthesis.synthesizer import Synthesizer, TaskInput
from llmvm_ray.teachers import TeacherCall, build_teacher


async def synthesize_for_task(
    config: Config,
    *,
    task_id: str,
    spec: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
    existing: Sequence[Mapping[str, Any]] | None = None,
    target: int | None = None,
    teacher_client: Any = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(kept rows with provenance, the run's report) for the task ``spec`` (a ``TaskSpec``
    dict: context, teacher, generation settings). ``rows`` are the seeds; new rows are
    deduped against ``existing`` (default: the seeds), e.g. every row including held-out.
    With ``answer_with_teacher``, new prompts are answered with the task's own settings."""
    task_spec = TaskSpec.from_dict(dict(spec))

    def answer_call(task: TaskInput, prompt: str, seed: int) -> TeacherCall:
        return TeacherCall(task_spec.context, prompt, task_spec.sampling(seed))

    s = config.synthesis
    seeds, bad = load_seeds(rows)
    require_seeds(seeds, bad, f"task {task_id}")
    run_id = f"synth-{uuid.uuid4().hex[:12]}"
    synthesizer = Synthesizer.for_config(
        config,
        teacher_client or build_teacher(config, task_spec.teacher, synthesis=True),
        run_id=run_id,
        answer_call=answer_call,
    )
    # Loading an encoder takes seconds of CPU: not on the actor's event loop.
    deduper = await asyncio.to_thread(Deduper, s)
    result = await drive(
        [TaskInput(task=task_id, context=task_spec.context, seeds=tuple(seeds))],
        s.examples_to_generate if target is None else target,
        synthesizer,
        local_executor(synthesizer),
        lambda: deduper,
        existing={task_id: list(rows if existing is None else existing)},
    )
    return result.rows(), {"run_id": run_id, **result.report()}
