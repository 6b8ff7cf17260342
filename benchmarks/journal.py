"""What the optimizer's journal costs a recorded answer (issue 16 §5), side by side in one run.

``OptimizerActor.record`` of one row, as the ingress calls it for every recorded teacher
answer: with the journal (the row is written to its own small file, atomically, fsync on a
local disk) vs the same call with the journal write skipped (how recording worked before:
a buffer append). The actor runs in-process on a local storage root.

    python benchmarks/journal.py [--calls 400] [--storage DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llmvm_ray.config import Config  # noqa: E402
from llmvm_ray.optimizer.actor import OptimizerActor  # noqa: E402
from llmvm_ray.optimizer.task import TaskSpec  # noqa: E402


async def per_call_ms(root: str, calls: int, journal: bool) -> list[float]:
    config = Config.model_validate(
        {
            "storage_path": root,
            "models": [{"name": n, "model_uri": "x"} for n in ("teacher", "student")],
            "optimizer": {"flush_rows": 10**6, "max_train_examples": 10**6},
        }
    )
    actor = OptimizerActor(config)
    if not journal:
        actor._journal = lambda state, rows: ""  # noqa: SLF001 - the old behaviour
    spec = TaskSpec("default", f"bench {time.time_ns()}", "teacher", "student", max_tokens=16)
    task_id = (await actor.route(spec.to_dict(), finetune=True))["task_id"]
    times = []
    for i in range(calls):
        row = {"prompt": f"Input: March {i}, 2021\nOutput:", "completion": " 2021-03-05"}
        started = time.perf_counter()
        await actor.record(task_id, [{**row, "source": "teacher"}])
        times.append((time.perf_counter() - started) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--storage", help="storage root (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.storage or tmp
        rows = []
        for _ in range(3):  # alternate, so drift on a shared machine hits both alike
            for journal in (False, True):
                times = asyncio.run(per_call_ms(root, args.calls, journal))
                rows.append(
                    (journal, statistics.median(times), statistics.quantiles(times, n=100)[98])
                )
    print("| record() of one row | median ms | p99 ms |")
    print("|---|---|---|")
    for journal, median, p99 in rows:
        print(f"| {'journal' if journal else 'buffer only'} | {median:.3f} | {p99:.3f} |")


if __name__ == "__main__":
    main()
