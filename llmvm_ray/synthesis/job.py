"""The batch synthesis run behind ``jobs/synthesize.py`` and ``llmvm synth run``.

Seeds (Parquet or JSONL, columns ``prompt``, ``completion``, optional ``id`` and optional
``task`` / ``context`` to hold several tasks in one file) → ``{out}/data.parquet``: the kept
rows with provenance (run id, teacher, template, encoding, seed ids, unit, attempt),
``{out}/errors.parquet`` (every failed request, unparseable fragment, invalid record and
rejected seed, with its error) and ``{out}/stats.json`` (the funnel per task and in total,
and why each task stopped).

Why the actor pool and not Ray Data: synthesis is an open loop, not a map over a fixed
dataset. How many requests a task needs is only known as results come back (parse failures
and duplicates decide it), dedup is stateful across the whole run, and the limit that
matters is the teacher's (requests in flight and per second), not cluster CPUs. Ray Data's
``map_batches`` would need the request count up front and would batch by blocks rather
than pace requests. A few async actors, each holding a teacher client, fit that shape.

Resumable: each finished unit is saved as ``{out}/units/{task}/{unit}.json`` (atomically)
before it is absorbed, and ``{out}/run.json`` pins the run's identity (run id, seeds hash,
target, teacher, settings). Running again with the same arguments replays saved units and
requests only the missing ones; different arguments are refused rather than mixed.
A run stopped through ``should_stop`` writes ``stats.json`` (``"stopped": true``) but no
``data.parquet``: that file appears only when the run has finished.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from llmvm_ray.config import Config
from llmvm_ray.errors import ConflictError, InvalidRequestError, NotFoundError
from llmvm_ray.store import datasets
from llmvm_ray.store.fs import Storage, safe_component
from llmvm_ray.synthesis.dedup import Deduper
from llmvm_ray.synthesis.records import load_seeds
from llmvm_ray.synthesis.run import RunResult, drive, local_executor
from llmvm_ray.synthesis.synthesizer import (
    Synthesizer,
    TaskInput,
    UnitResult,
    resolve_encoding,
)
from llmvm_ray.teachers import build_teacher

logger = logging.getLogger(__name__)

DEFAULT_TASK = "default"
# Settings a resumed run may change: how fast and how wide it runs, not what it produces.
OPERATIONAL = {
    "num_workers",
    "max_in_flight",
    "requests_per_s",
    "worker_num_cpus",
    "stats_interval_s",
    "request_timeout_s",
    "backoff_s",
    "backoff_max_s",
}


def read_seed_rows(storage: Storage, uri: str) -> list[dict[str, Any]]:
    """Rows of a Parquet file/folder or a JSONL file (bad JSON lines become error rows)."""
    where, path = storage.locate(uri)
    if not where.exists(path):
        raise NotFoundError(f"seeds {uri} not found", param="seeds")
    if path.endswith((".jsonl", ".json")):
        rows = []
        for i, line in enumerate(where.read_bytes(path).decode().splitlines()):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                rows.append({"id": f"line-{i + 1}", "_error": f"not JSON: {exc.msg}"})
                continue
            rows.append(value if isinstance(value, dict) else {"_error": "not an object"})
        return rows
    files = where.list_files(path, ".parquet") if where.is_dir(path) else [path]
    try:
        tables = [pq.read_table(f, filesystem=where.filesystem) for f in files]
    except (OSError, pa.ArrowInvalid) as exc:
        raise InvalidRequestError(f"seeds {uri}: not readable Parquet ({exc})", "seeds") from exc
    if not tables:
        raise InvalidRequestError(f"seeds {uri}: no Parquet files", param="seeds")
    return pa.concat_tables(tables, promote_options="permissive").to_pylist()


def group_tasks(rows: list[dict[str, Any]]) -> tuple[list[TaskInput], list[dict[str, Any]]]:
    """Tasks (by ``task`` column, else by ``context``) with their seeds, and rejected rows."""
    groups: dict[str, list[dict[str, Any]]] = {}
    contexts: dict[str, str] = {}
    bad: list[dict[str, Any]] = []
    for i, row in enumerate(rows):
        if "_error" in row:
            bad.append({"task": None, "seed_id": row.get("id", f"row-{i}"), "error": row["_error"]})
            continue
        context = str(row.get("context") or "")
        key = row.get("task") or (
            "ctx-" + hashlib.sha256(context.encode()).hexdigest()[:12] if context else DEFAULT_TASK
        )
        try:
            key = safe_component(str(key), "task")
        except ValueError as exc:
            bad.append({"task": str(key)[:64], "seed_id": row.get("id"), "error": str(exc)})
            continue
        groups.setdefault(key, []).append({**row, "id": row.get("id", f"row-{i}")})
        contexts.setdefault(key, context)
    tasks = []
    for key, members in groups.items():
        seeds, rejected = load_seeds(members)
        bad += [{"task": key, **r} for r in rejected]
        if seeds:
            tasks.append(TaskInput(task=key, context=contexts[key], seeds=tuple(seeds)))
        else:
            bad.append({"task": key, "seed_id": None, "error": "task has no usable seeds"})
    return tasks, bad


@dataclass
class StorageUnits:
    """Saved units under ``{out}/units``: the run's durable progress."""

    storage: Storage
    out: str

    def _dir(self, task: str) -> str:
        return self.storage.path(self.out, "units", task)

    def load(self, task: str) -> dict[int, UnitResult]:
        found = {}
        for file in self.storage.list_files(self._dir(task), ".json"):
            result = UnitResult.from_dict(json.loads(self.storage.read_bytes(file)))
            found[result.unit] = result
        return found

    def save(self, result: UnitResult) -> None:
        path = f"{self._dir(result.task)}/{result.unit:08d}.json"
        self.storage.write_bytes(path, json.dumps(result.to_dict()).encode())


def _identity(
    config: Config, tasks: list[TaskInput], target: int, run_id: str | None
) -> dict[str, Any]:
    digest = hashlib.sha256()
    for t in tasks:
        for seed in t.seeds:
            fields = [t.task, t.context, seed.id, seed.prompt, seed.completion]
            digest.update(json.dumps(fields).encode())
    s = config.synthesis
    return {
        "run_id": run_id or f"synth-{uuid.uuid4().hex[:12]}",
        "seeds": "sha256:" + digest.hexdigest(),
        "target": target,
        "teacher": config.teacher.model,
        "encoding": resolve_encoding(config),
        "settings": s.model_dump(mode="json", exclude=OPERATIONAL),
    }


def _write_parquet(storage: Storage, path: str, rows: list[dict[str, Any]], schema: Any) -> None:
    table = pa.Table.from_pylist(rows, schema=schema) if rows else schema.empty_table()
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    storage.write_bytes(path, buffer.getvalue())


DATA_SCHEMA = pa.schema(
    [
        ("prompt", pa.string()),
        ("completion", pa.string()),
        ("source", pa.string()),
        ("run_id", pa.string()),
        ("task", pa.string()),
        ("teacher", pa.string()),
        ("template", pa.string()),
        ("encoding", pa.string()),
        ("completion_by", pa.string()),
        ("seed_ids", pa.list_(pa.string())),
        ("unit", pa.int64()),
        ("attempt", pa.int64()),
        ("created_at", pa.float64()),
    ]
)
ERROR_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("task", pa.string()),
        ("unit", pa.int64()),
        ("attempt", pa.int64()),
        ("seed_id", pa.string()),
        ("kind", pa.string()),
        ("error", pa.string()),
        ("raw", pa.string()),
    ]
)


def run_job(
    config: Config,
    seeds_uri: str,
    out: str,
    *,
    target: int | None = None,
    run_id: str | None = None,
    existing: str | None = None,
    use_pool: bool = True,
    on_unit: Callable[[UnitResult], None] | None = None,
    deduper_factory: Callable[[], Deduper] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Run (or resume) a batch synthesis; returns the report also written to stats.json.

    ``target`` is examples per task (default ``synthesis.examples_to_generate``);
    ``existing`` is a dataset (Parquet file/folder) every task's new rows are deduped against.
    """
    storage = Storage.from_uri(config.storage_path)
    out_storage, out_root = storage.locate(out)
    rows = read_seed_rows(storage, seeds_uri)
    tasks, bad_seeds = group_tasks(rows)
    if not tasks:
        detail = f": {bad_seeds[0]['error']}" if bad_seeds else ""
        raise InvalidRequestError(f"seeds {seeds_uri}: no usable seed examples{detail}", "seeds")
    target = config.synthesis.examples_to_generate if target is None else target

    identity = _identity(config, tasks, target, run_id)
    out_dir = Storage(out_storage.filesystem, out_root, out_storage.scheme)
    run_file = out_dir.path("run.json")
    if out_dir.exists(run_file):
        saved = json.loads(out_dir.read_bytes(run_file))
        mismatch = [k for k in identity if k != "run_id" and saved.get(k) != identity[k]]
        if mismatch or (run_id and saved["run_id"] != run_id):
            raise ConflictError(
                f"{out} holds run {saved['run_id']} with different {mismatch or ['run_id']}; "
                "use another output folder",
                param="output",
            )
        identity = saved
        logger.info("resuming synthesis run %s in %s", saved["run_id"], out)
    else:
        out_dir.write_bytes(run_file, json.dumps(identity, indent=2).encode())
    rid = identity["run_id"]

    existing_rows: dict[str, list[dict[str, Any]]] = {}
    if existing:
        rows_there = datasets.read_examples(storage, existing)
        existing_rows = {t.task: rows_there for t in tasks}

    synthesizer = Synthesizer.for_config(
        config,
        build_teacher(config, synthesis=True) if not use_pool else _PlanOnly(),
        encoding=identity["encoding"],
        run_id=rid,
    )
    make_deduper = deduper_factory or (lambda: Deduper(config.synthesis))
    units = StorageUnits(out_dir, "")
    started = time.monotonic()
    startup_s = 0.0
    workers: list[Any] = []
    try:
        if use_pool:
            import ray

            from llmvm_ray.synthesis.workers import pool_executor, start_pool

            workers = start_pool(config, rid, tasks)
            ray.get([w.peak_in_flight.remote() for w in workers])  # wait until they are up
            execute = pool_executor(workers)
            startup_s = time.monotonic() - started
        else:
            execute = local_executor(synthesizer)
        result: RunResult = asyncio.run(
            drive(
                tasks,
                target,
                synthesizer,
                execute,
                make_deduper,
                existing=existing_rows,
                units=units,
                on_progress=on_unit,
                should_stop=should_stop,
            )
        )
    finally:
        if workers:
            from llmvm_ray.synthesis.workers import stop_pool

            stop_pool(workers)

    errors = result.errors() + [
        {"run_id": rid, "kind": "bad_seed", "seed_id": _str(b.get("seed_id")), "error": b["error"]}
        for b in bad_seeds
    ]
    if not result.stopped:
        _write_parquet(out_dir, out_dir.path("data.parquet"), result.rows(), DATA_SCHEMA)
        _write_parquet(out_dir, out_dir.path("errors.parquet"), errors, ERROR_SCHEMA)
    report = {
        "run_id": rid,
        "output": out_dir.to_uri(out_dir.path("data.parquet")),
        "bad_seeds": len(bad_seeds),
        "elapsed_s": round(time.monotonic() - started, 3),
        "startup_s": round(startup_s, 3),
        "units_saved": sum(len(t.done) for t in result.tasks.values()),
        **result.report(),
    }
    out_dir.write_bytes(out_dir.path("stats.json"), json.dumps(report, indent=2).encode())
    return report


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


class _PlanOnly:
    """The driver's synthesizer only plans units when workers run them."""

    name = "planner"

    async def complete(self, call: Any) -> Any:  # pragma: no cover - never called
        raise RuntimeError("the driver does not call the teacher")
