"""What the optimizer acknowledged survives it: journaled before the answer goes out,
replayed by the next actor, counters recomputed from the data; unreadable files are
quarantined without stopping the other tasks. (The actor's code run in-process on real
storage; tests/faults kills the real actor under load.)"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from llmvm_ray.config import Config
from llmvm_ray.optimizer.actor import OptimizerActor
from llmvm_ray.optimizer.task import TaskSpec
from llmvm_ray.store import datasets
from llmvm_ray.store.fs import Storage


def config(root: Path) -> Config:
    return Config.model_validate(
        {
            "storage_path": str(root),
            "models": [
                {"name": "teacher", "model_uri": "x"},
                {"name": "student", "model_uri": "y"},
            ],
            "optimizer": {"flush_rows": 1000, "holdout_fraction": 0.25},
        }
    )


def spec(context: str) -> dict:
    return TaskSpec("default", context, "teacher", "student", max_tokens=8).to_dict()


def rows(n: int, start: int = 0) -> list[dict]:
    return [
        {"prompt": f"p{i}", "completion": f" c{i}", "source": "teacher"} for i in range(start, n)
    ]


async def record(actor: OptimizerActor, context: str, batch: list[dict]) -> str:
    task_id = (await actor.route(spec(context), finetune=True))["task_id"]
    for row in batch:  # one call per answer, as the ingress makes them
        assert await actor.record(task_id, [row]) == 1
    return task_id


def dataset_prompts(root: Path, task_id: str) -> list[str]:
    storage = Storage.from_uri(str(root))
    path = datasets.dataset_path("default", task_id)
    if not storage.is_dir(storage.path(path)):
        return []
    return sorted(r["prompt"] for r in datasets.read_examples(storage, path))


def test_acknowledged_rows_survive_an_actor_that_never_flushed(tmp_path):
    async def main():
        first = OptimizerActor(config(tmp_path))
        task_id = await record(first, "ctx", rows(12))
        assert dataset_prompts(tmp_path, task_id) == []  # only buffered (and journaled)
        journal = tmp_path / "tasks" / "default" / task_id / "journal"
        assert len(list(journal.glob("*.json"))) == 12
        # The actor dies here (nothing flushed); the next one replays, then flushes.
        second = OptimizerActor(config(tmp_path))
        state = second.tasks[task_id]
        assert (state.examples, state.holdout) == (12, 3)
        assert await second.record(task_id, rows(12)) == 0  # already recorded: not again
        await second.flush()
        assert dataset_prompts(tmp_path, task_id) == sorted(f"p{i}" for i in range(12))
        assert list(journal.glob("*.json")) == []
        third = OptimizerActor(config(tmp_path))  # nothing left to replay, nothing doubled
        assert third.tasks[task_id].examples == 12 and not third.buffers.get(task_id)

    asyncio.run(main())


def test_a_flush_that_already_landed_is_not_replayed_twice(tmp_path):
    async def main():
        first = OptimizerActor(config(tmp_path))
        task_id = await record(first, "ctx", rows(5))
        journals = list(first.journals[task_id])
        await first.flush()
        # As if the actor died after writing the part but before deleting its journal.
        for path in journals:
            Path(path).write_text('[{"prompt": "p0", "completion": " c0", "split": "train"}]')
        second = OptimizerActor(config(tmp_path))
        assert second.tasks[task_id].examples == 5
        await second.flush()
        assert dataset_prompts(tmp_path, task_id) == [f"p{i}" for i in range(5)]

    asyncio.run(main())


def test_unreadable_files_are_quarantined_and_the_other_tasks_load(tmp_path):
    async def main():
        first = OptimizerActor(config(tmp_path))
        good = await record(first, "good", rows(4))
        bad_state = await record(first, "bad state", rows(4))
        bad_part = await record(first, "bad part", rows(4))
        await first.flush()
        bad_part_more = rows(8, 4)
        for row in bad_part_more:
            await first.record(bad_part, [row])
        await first.flush()
        (tmp_path / "tasks" / "default" / bad_state / "state.json").write_text("{not json")
        parts = sorted((tmp_path / "datasets" / "default" / bad_part).glob("*.parquet"))
        parts[0].write_bytes(b"PAR1 garbage")
        torn = tmp_path / "tasks" / "default" / good / "journal" / "0-torn.json"
        torn.parent.mkdir(exist_ok=True)
        torn.write_text('[{"prompt": "p9", "compl')  # a write the kill interrupted
        second = OptimizerActor(config(tmp_path))
        assert set(second.tasks) == {good, bad_part}
        assert second.tasks[good].examples == 4
        assert second.tasks[bad_part].examples == 4  # the readable part's rows
        events = [e["event"] for e in second.tasks[bad_part].events]
        assert "quarantined" in events
        quarantined = {p.name.split(".")[0] for p in (tmp_path / "quarantine").rglob("*.*")}
        assert {"state", parts[0].name.split(".")[0], "0-torn"} <= quarantined

    asyncio.run(main())


def test_unwritable_storage_is_a_503_before_the_teacher_is_paid_and_recovers(tmp_path):
    """The journal cannot be written (here its folder is a file, as a full or read-only
    disk would refuse it): the answer is refused, the next recording requests are refused at
    routing, before any teacher call, and recording resumes once the storage does."""
    from llmvm_ray.errors import ServiceUnavailableError

    async def main():
        actor = OptimizerActor(config(tmp_path))
        task_id = await record(actor, "ctx", rows(2))
        journal = tmp_path / "tasks" / "default" / task_id / "journal"
        await actor.flush()
        journal.rmdir()
        journal.write_text("not a folder")
        with pytest.raises(ServiceUnavailableError):
            await actor.record(task_id, rows(3, 2))
        assert actor.tasks[task_id].examples == 2  # nothing counted for the refused row
        with pytest.raises(ServiceUnavailableError) as refused:
            await actor.route(spec("ctx"), finetune=True)
        assert "nothing was sent to the teacher" in refused.value.message
        assert (await actor.route(spec("ctx"), finetune=False))["record"] is False  # serves
        journal.unlink()  # space is back
        assert (await actor.route(spec("ctx"), finetune=True))["record"] is True
        assert await actor.record(task_id, rows(3, 2)) == 1
        leftovers = [p for p in (tmp_path / "tasks").rglob(".*.tmp")]
        assert leftovers == []

    asyncio.run(main())
