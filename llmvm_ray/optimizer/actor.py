"""The optimizer actor: one per cluster, shared by every ingress replica.

It owns each task's state and decides, per request, who answers (teacher or promoted
student) and whether to shadow-check. It records teacher answers (buffered, then written as
Parquet parts), starts a fine-tune through the registry / Ray Train path when a task has
enough new examples, gates the result on held-out teacher answers through the real serving
path, promotes or rejects it, and rolls a task back when shadow agreement drifts.

The request path never waits for any of that: routing is an in-memory lookup; recording is a
journal write (below) and a buffer append; fine-tunes, gates and flushes run in a background
loop, which resumes by itself when the actor restarts.

Durability: a recorded row is acknowledged only once it is in the task's journal
(``tasks/<tenant>/<task>/journal/``, one small file per ``record`` call, written atomically);
flushing a buffer to a Parquet part deletes the journal files it covers. A restarted actor
replays what the journals hold beyond the dataset, so a kill loses no acknowledged row; its
counters are recomputed from the data. A state file or Parquet part that cannot be read is
moved to ``quarantine/`` and reported, and the other tasks load as usual. Model calls happen in
the ingress, not here, so this actor never becomes the throughput bottleneck.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
import uuid
from typing import Any

import ray

from llmvm_ray.config import Config
from llmvm_ray.engine.types import AdapterRef, GenerationRequest
from llmvm_ray.errors import NotFoundError, RateLimitError, ServiceUnavailableError
from llmvm_ray.observability.metrics import OptimizerMetrics
from llmvm_ray.optimizer import scoring
from llmvm_ray.optimizer.state import GateResult, TaskState
from llmvm_ray.optimizer.synthesis import synthesize_for_task
from llmvm_ray.optimizer.task import TaskSpec
from llmvm_ray.runtime import generate, model_handle
from llmvm_ray.store import datasets
from llmvm_ray.store.fs import Storage
from llmvm_ray.train.service import FinetuneService

logger = logging.getLogger(__name__)

ACTOR_PREFIX = "llmvm-optimizer"
STATE_FILE = "state.json"
JOURNAL_DIR = "journal"
QUARANTINE_DIR = "quarantine"
GATE_SEED = 0
LOOP_INTERVAL_S = 0.25


class OptimizerActor:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.opt = config.optimizer
        self.storage = Storage.from_uri(config.storage_path)
        self.tasks: dict[str, TaskState] = {}
        self.seen_prompts: dict[str, set[str]] = {}
        self.buffers: dict[str, list[dict[str, Any]]] = {}
        self.journals: dict[str, list[str]] = {}  # journal files of the buffered rows
        self.buffered_since: dict[str, float] = {}
        self.gating: set[str] = set()
        # data_synthesis: tasks that asked for it, and those synthesizing now (synthesis/).
        self.synthesis_wanted: set[str] = set()
        self.synthesizing: set[str] = set()
        self._synthesis_runs: set[asyncio.Task] = set()
        self._finetunes: FinetuneService | None = None
        self._storage_failed = False  # the last journal write failed: probe before recording
        self._loop: asyncio.Task | None = None
        self._rng = random.Random()
        self.metrics = OptimizerMetrics(config.serve.app_name, self.opt.teacher_cost_per_1k_tokens)
        self._load()
        self._report_tasks()
        # Resume the background loop (flush replayed rows, follow runs) without waiting for
        # traffic: a call to ourselves, served once this constructor returns.
        if ray.is_initialized() and ray.get_runtime_context().get_actor_id():
            ray.get_runtime_context().current_actor.resume.remote()

    async def resume(self) -> None:
        self._ensure_loop()

    # -- lifecycle -----------------------------------------------------------------------

    def _state_path(self, tenant: str, task_id: str) -> str:
        return self.storage.path("tasks", tenant, task_id, STATE_FILE)

    def _load(self) -> None:
        root = self.storage.path("tasks")
        if not self.storage.is_dir(root):
            return
        import pyarrow.fs as pafs

        selector = pafs.FileSelector(root, recursive=True)
        states = [
            info.path
            for info in self.storage.filesystem.get_file_info(selector)
            if info.base_name == STATE_FILE and f"/{QUARANTINE_DIR}/" not in info.path
        ]
        replayed = 0
        for path in states:
            try:
                state = TaskState.model_validate_json(self.storage.read_bytes(path))
            except Exception as exc:  # noqa: BLE001 - one bad file must not stop the others
                self._quarantine(path, exc)
                continue
            self.tasks[state.task_id] = state
            rows = self._readable_rows(state)
            self.seen_prompts[state.task_id] = {r["prompt"] for r in rows}
            journaled = self._replay(state)
            replayed += len(journaled)
            rows += journaled
            # The data is the truth: counters saved before a kill may lag behind it.
            state.examples = len(rows)
            state.holdout = sum(r.get("split") == "holdout" for r in rows)
            state.synthesized = sum(r.get("source") == "synthesis" for r in rows)
        logger.info("optimizer: loaded %d tasks, replayed %d rows", len(self.tasks), replayed)

    def _journal_dir(self, state: TaskState) -> str:
        return self.storage.path("tasks", state.tenant, state.task_id, JOURNAL_DIR)

    def _journal(self, state: TaskState, rows: list[dict[str, Any]]) -> str:
        """Write ``rows`` durably before they are acknowledged; return the journal file."""
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.json"
        path = f"{self._journal_dir(state)}/{name}"
        self.storage.write_bytes(path, json.dumps(rows).encode())
        return path

    def _probe_storage(self, state: TaskState) -> None:
        """Whether the journal can be written again (a full or unwritable storage recovers
        by itself); ``ServiceUnavailableError`` (503) while it cannot."""
        try:
            self._forget([self._journal(state, [])])
        except Exception as exc:
            raise ServiceUnavailableError(
                f"storage cannot record answers now ({type(exc).__name__}); nothing was sent "
                "to the teacher",
                retry_after_s=self.opt.flush_interval_s,
            ) from exc
        self._storage_failed = False

    def _forget(self, journals: list[str]) -> None:
        for path in journals:
            with contextlib.suppress(FileNotFoundError):
                self.storage.filesystem.delete_file(path)

    def _replay(self, state: TaskState) -> list[dict[str, Any]]:
        """Journaled rows not yet in the dataset, back into the buffer (flushed by the loop)."""
        seen = self.seen_prompts[state.task_id]
        rows: list[dict[str, Any]] = []
        journals = self.storage.list_files(self._journal_dir(state), ".json")
        for path in journals:
            try:
                entries = json.loads(self.storage.read_bytes(path))
            except Exception as exc:  # noqa: BLE001 - a torn write was never acknowledged
                self._quarantine(path, exc, state)
                continue
            for row in entries:
                if row["prompt"] not in seen:
                    seen.add(row["prompt"])
                    rows.append(row)
        if journals:
            self.buffers.setdefault(state.task_id, []).extend(rows)
            self.journals.setdefault(state.task_id, []).extend(journals)
            self.buffered_since[state.task_id] = time.monotonic()
        return rows

    def _readable_rows(self, state: TaskState) -> list[dict[str, Any]]:
        """The task's rows; a part that cannot be read is quarantined, not fatal."""
        try:
            return self._rows(state)
        except Exception:  # noqa: BLE001 - find the bad part(s) and set them aside
            pass
        directory = self.storage.path(datasets.dataset_path(state.tenant, state.task_id))
        rows: list[dict[str, Any]] = []
        for part in self.storage.list_files(directory, ".parquet"):
            try:
                rows += datasets.read_examples(self.storage, part)
            except Exception as exc:  # noqa: BLE001
                self._quarantine(part, exc, state)
        return rows

    def _quarantine(self, path: str, exc: BaseException, state: TaskState | None = None) -> None:
        """Move an unreadable file aside (``quarantine/`` under the storage root, same
        relative path) and report it: in the log, and in its task's events."""
        relative = path.removeprefix(self.storage.root).lstrip("/")
        target = self.storage.path(QUARANTINE_DIR, f"{relative}.{time.time_ns()}")
        self.storage.filesystem.create_dir(target.rsplit("/", 1)[0], recursive=True)
        self.storage.filesystem.move(path, target)
        logger.error("optimizer: quarantined %s (%s: %s)", path, type(exc).__name__, exc)
        if state is not None:
            state.event("quarantined", path=relative, error=f"{type(exc).__name__}: {exc}"[:300])

    def _save(self, state: TaskState) -> None:
        self.storage.write_bytes(
            self._state_path(state.tenant, state.task_id), state.model_dump_json().encode()
        )

    def _ensure_loop(self) -> None:
        if self._loop is None or self._loop.done():
            self._loop = asyncio.get_running_loop().create_task(self._background())

    @property
    def finetunes(self) -> FinetuneService:
        if self._finetunes is None:
            self._finetunes = FinetuneService(self.config)
        return self._finetunes

    # -- the request path ----------------------------------------------------------------

    async def route(
        self, spec: dict[str, Any], finetune: bool, data_synthesis: bool = False
    ) -> dict[str, Any]:
        """Who answers this request, and what to do with the answer."""
        self._ensure_loop()
        task_spec = TaskSpec.from_dict(spec)
        task_id = task_spec.task_id
        state = self.tasks.get(task_id)
        if state is None:
            quota = self.config.quotas
            if sum(s.tenant == task_spec.tenant for s in self.tasks.values()) >= quota.max_tasks:
                raise RateLimitError(
                    f"this tenant has {quota.max_tasks} tasks (quotas.max_tasks): reuse a "
                    "context, or ask the operator for more",
                    retry_after_s=quota.retry_after_s,
                )
            state = TaskState(task_id=task_id, tenant=task_spec.tenant, spec=task_spec.to_dict())
            state.event("created")
            self.tasks[task_id] = state
            self.seen_prompts[task_id] = set()
            self._save(state)
        if data_synthesis and state.synthesized == 0:
            self.synthesis_wanted.add(task_id)
        student = state.route == "student" and state.adapter is not None
        record = (finetune or self.opt.record_all) and state.examples < self.opt.max_train_examples
        if record and not student and self._storage_failed:
            # Refuse before the teacher is paid for an answer that could not be kept.
            await asyncio.to_thread(self._probe_storage, state)
        return {
            "task_id": task_id,
            "route": "student" if student else "teacher",
            "adapter": {"name": state.adapter, "path": state.adapter_path} if student else None,
            "record": record,
            "shadow": student and self._rng.random() < self.opt.shadow_rate,
        }

    async def record(self, task_id: str, rows: list[dict[str, Any]]) -> int:
        """Buffer teacher answers (``prompt``, ``completion``, ...) for a task; returns how
        many were new. Prompts already recorded are skipped, so the held-out split never
        overlaps the training split."""
        self._ensure_loop()
        state = self._task(task_id)
        seen = self.seen_prompts.setdefault(task_id, set())
        every = max(2, round(1 / self.opt.holdout_fraction))
        new: list[dict[str, Any]] = []
        for row in rows:
            if row["prompt"] in seen or state.examples >= self.opt.max_train_examples:
                continue
            seen.add(row["prompt"])
            split = "holdout" if state.examples % every == every - 1 else "train"
            if row.get("source") == "synthesis":
                split = "train"  # the gate measures against real teacher answers only
            self._count(state, split, row, 1)
            new.append({**row, "split": split, "recorded_at": time.time()})
        if not new:
            return 0
        try:
            journal = await asyncio.to_thread(self._journal, state, new)
            self._storage_failed = False
        except Exception as exc:
            self._storage_failed = True
            for row in new:
                seen.discard(row["prompt"])
                self._count(state, row["split"], row, -1)
            raise ServiceUnavailableError(
                f"could not record the answer: storage failed ({type(exc).__name__})"
            ) from exc
        self.buffers.setdefault(task_id, []).extend(new)
        self.journals.setdefault(task_id, []).append(journal)
        for row in new:
            self.metrics.recorded(str(row.get("source") or "teacher"))
        self.buffered_since.setdefault(task_id, time.monotonic())
        if len(self.buffers[task_id]) >= self.opt.flush_rows:
            await self._flush(task_id)
        return len(new)

    @staticmethod
    def _count(state: TaskState, split: str, row: dict[str, Any], sign: int) -> None:
        state.examples += sign
        state.holdout += sign * (split == "holdout")
        state.synthesized += sign * (row.get("source") == "synthesis")

    async def served(
        self, task_id: str, by: str, prompt_tokens: int, completion_tokens: int
    ) -> None:
        state = self._task(task_id)
        state.prompt_tokens += prompt_tokens
        state.completion_tokens += completion_tokens
        if by == "student":
            state.student_calls += 1
            state.teacher_tokens_saved += prompt_tokens + completion_tokens
        else:
            state.teacher_calls += 1
        self.metrics.answered(by, prompt_tokens + completion_tokens)

    async def fallback(self, task_id: str) -> None:
        """A student-routed call that the teacher answered: no student replica did."""
        self._task(task_id).fallbacks += 1

    async def shadow_result(self, task_id: str, agree: bool) -> None:
        """One shadow comparison; rolls the task back to the teacher on drift."""
        state = self._task(task_id)
        state.shadow_calls += 1
        self.metrics.shadow(agree)
        if state.route != "student":
            return
        state.shadow.append(int(agree))
        del state.shadow[: -self.opt.shadow_window]
        agreement = state.agreement
        if (
            len(state.shadow) >= self.opt.min_shadow_samples
            and agreement is not None
            and agreement < self.opt.drift_threshold
        ):
            logger.warning("task %s: agreement %.2f, rolling back", task_id, agreement)
            state.route = "teacher"
            state.rollbacks += 1
            state.shadow = []
            # Retrain once new teacher rows arrive (growth counts from now).
            state.trained_on = min(state.trained_on, state.examples)
            state.event("rollback", agreement=agreement, adapter=state.adapter)
            self.metrics.rollback()
        self._save(state)

    # -- queries -------------------------------------------------------------------------

    def _task(self, task_id: str) -> TaskState:
        try:
            return self.tasks[task_id]
        except KeyError:
            raise NotFoundError(f"task '{task_id}' does not exist", param="task_id") from None

    async def list_tasks(self, tenant: str) -> list[dict[str, Any]]:
        return [self._view(s) for s in self.tasks.values() if s.tenant == tenant]

    async def get_task(self, tenant: str, task_id: str) -> dict[str, Any]:
        state = self.tasks.get(task_id)
        if state is None or state.tenant != tenant:  # another tenant's task does not exist
            raise NotFoundError(f"task '{task_id}' does not exist", param="task_id")
        return {**self._view(state), "events": list(state.events)}

    async def adapters(self, tenant: str) -> list[dict[str, str]]:
        """Promoted students visible to ``tenant`` (for ``/v1/models``)."""
        return [
            {"task_id": s.task_id, "name": s.adapter, "path": s.adapter_path}
            for s in self.tasks.values()
            if s.tenant == tenant and s.route == "student" and s.adapter and s.adapter_path
        ]

    async def flush(self) -> None:
        for task_id in list(self.buffers):
            await self._flush(task_id)

    # -- background: flushes, triggers, gates --------------------------------------------

    async def _background(self) -> None:
        while True:
            try:
                await self._tick()
            except Exception:
                logger.exception("optimizer background step failed")
            await asyncio.sleep(LOOP_INTERVAL_S)

    def _report_tasks(self) -> None:
        routes = [s.route for s in self.tasks.values()]
        self.metrics.tasks({r: routes.count(r) for r in ("teacher", "student")})

    async def _tick(self) -> None:
        self._report_tasks()
        now = time.monotonic()
        for task_id, since in list(self.buffered_since.items()):
            if now - since >= self.opt.flush_interval_s:
                await self._flush(task_id)
        for state in list(self.tasks.values()):
            if state.active_run is not None:
                await self._follow_run(state)
            elif state.task_id in self.synthesis_wanted:
                self._maybe_synthesize(state)  # the fine-tune waits for the new rows
            elif self._wants_training(state) and not self.buffers.get(state.task_id):
                await self._start_run(state)

    async def _flush(self, task_id: str) -> None:
        rows = self.buffers.pop(task_id, [])
        journals = self.journals.pop(task_id, [])
        self.buffered_since.pop(task_id, None)
        state = self._task(task_id)
        try:
            if rows:
                await asyncio.to_thread(
                    datasets.append_examples, self.storage, state.tenant, task_id, rows
                )
        except Exception:
            # Keep the rows (and their journal) for the next attempt rather than losing them.
            self.buffers.setdefault(task_id, [])[:0] = rows
            self.journals.setdefault(task_id, [])[:0] = journals
            self.buffered_since.setdefault(task_id, time.monotonic())
            raise
        if rows or journals:
            self._save(state)
        await asyncio.to_thread(self._forget, journals)

    # -- data synthesis (optimizer/synthesis.py) --------------------------------------------

    def _maybe_synthesize(self, state: TaskState) -> None:
        """Start synthesis once the task has enough real rows to show the teacher."""
        if state.task_id in self.synthesizing:
            return
        if state.examples - state.holdout < self.config.synthesis.optimizer_min_seeds:
            return
        self.synthesizing.add(state.task_id)
        task = asyncio.get_running_loop().create_task(self._synthesize(state))
        self._synthesis_runs.add(task)  # a reference keeps it alive until it ends
        task.add_done_callback(self._synthesis_runs.discard)

    async def _synthesize(self, state: TaskState) -> None:
        task_id = state.task_id
        try:
            await self._flush(task_id)
            rows = await asyncio.to_thread(self._rows, state)
            new, report = await synthesize_for_task(
                self.config,
                task_id=task_id,
                spec=state.spec,
                rows=[r for r in rows if r.get("split") != "holdout"],
                existing=rows,
            )
            added = await self.record(task_id, new)
            await self._flush(task_id)
            task_report = report["tasks"][task_id]
            logger.info("task %s: synthesized %d rows (%s)", task_id, added, task_report)
            state.event(
                "synthesized",
                run_id=report["run_id"],
                added=added,
                stop_reason=task_report["stop_reason"],
                funnel={k: task_report[k] for k in ("requested", "generated", "parsed", "valid")}
                | {"unique": task_report["unique"], "kept": task_report["kept"]},
            )
        except Exception as exc:  # the fine-tune goes ahead on the real rows
            logger.exception("task %s: synthesis failed", task_id)
            state.event("synthesis_failed", error=f"{type(exc).__name__}: {exc}")
        finally:
            self.synthesis_wanted.discard(task_id)
            self.synthesizing.discard(task_id)
            self._save(state)

    def _wants_training(self, state: TaskState) -> bool:
        return self._training_blocker(state) is None

    def _training_blocker(self, state: TaskState) -> str | None:
        """What the next fine-tune waits for, in words (None: it is due)."""
        if state.active_run:
            return f"fine-tune {state.active_run} to finish"
        if state.retry_at is not None and time.time() < state.retry_at:
            return (
                f"{state.retry_at - time.time():.0f} s before retrying the fine-tune that did "
                f"not run (finetune_retry_s {self.opt.finetune_retry_s:g})"
            )
        train_rows = state.examples - state.holdout
        if train_rows < self.opt.min_train_examples:
            return (
                f"{self.opt.min_train_examples - train_rows} more training examples "
                f"({train_rows} of min_train_examples {self.opt.min_train_examples})"
            )
        if state.holdout < self.opt.min_holdout:
            return (
                f"{self.opt.min_holdout - state.holdout} more held-out examples "
                f"({state.holdout} of min_holdout {self.opt.min_holdout}; holdout_fraction "
                f"{self.opt.holdout_fraction} of the recorded examples are held out)"
            )
        if state.trained_on and state.examples < state.trained_on * self.opt.retrain_growth:
            return (
                f"{state.examples} of {state.trained_on * self.opt.retrain_growth:.0f} examples "
                f"(retrain_growth {self.opt.retrain_growth}x the last run's {state.trained_on})"
            )
        return None

    def _view(self, state: TaskState) -> dict[str, Any]:
        return {**state.summary(), "next_fine_tune_waits_for": self._training_blocker(state)}

    def _rows(self, state: TaskState) -> list[dict[str, Any]]:
        path = datasets.dataset_path(state.tenant, state.task_id)
        if not self.storage.is_dir(self.storage.path(path)):
            return []
        return datasets.read_examples(self.storage, path)

    async def _start_run(self, state: TaskState) -> None:
        rows = [r for r in await asyncio.to_thread(self._rows, state) if r["split"] == "train"]
        train_uri = self.storage.uri(
            "tasks", state.tenant, state.task_id, f"train-{len(rows)}.parquet"
        )
        await asyncio.to_thread(
            datasets.write_examples,
            self.storage,
            train_uri,
            [{"prompt": r["prompt"], "completion": r["completion"]} for r in rows],
        )
        state.trained_on_before_run, state.trained_on = state.trained_on, state.examples
        try:
            run = await asyncio.to_thread(
                self.finetunes.create,
                dataset=train_uri,
                base_model=state.spec["student"],
                tenant=state.tenant,
                task_id=state.task_id,
                context=state.spec.get("context"),
                hyperparameters={**self.opt.train_overrides, "method": "lora"},
                metadata={"by": "optimizer"},
            )
        except Exception as exc:
            logger.exception("task %s: could not start a fine-tune", state.task_id)
            state.event("finetune_rejected", error=str(exc))
            self._run_did_not_train(state)
            self._save(state)
            return
        state.active_run = run.id
        state.runs.append(run.id)
        state.event("finetune_started", run_id=run.id, examples=len(rows))
        self._save(state)

    def _run_did_not_train(self, state: TaskState) -> None:
        """A fine-tune that was rejected or did not succeed trained nothing: the next one
        waits for ``finetune_retry_s``, not for ``retrain_growth`` more rows."""
        state.trained_on = state.trained_on_before_run
        state.retry_at = time.time() + self.opt.finetune_retry_s

    async def _follow_run(self, state: TaskState) -> None:
        run_id = state.active_run
        if run_id in self.gating:
            return
        run = await asyncio.to_thread(self.finetunes.get, run_id)
        if not run.status.terminal:
            return
        if run.status != "SUCCEEDED" or not run.output_path:
            state.active_run = None
            state.event("finetune_ended", run_id=run_id, status=str(run.status), error=run.error)
            self._run_did_not_train(state)
            self._save(state)
            return
        self.gating.add(run_id)
        try:
            gate = await self._gate(state, run_id, run.output_path)
        finally:
            self.gating.discard(run_id)
        state.active_run = None
        state.gates.append(gate)
        self.metrics.gate(gate.passed)
        if gate.passed:
            state.route = "student"
            state.adapter = _adapter_name(state.task_id, run_id)
            state.adapter_path = run.output_path
            state.promoted_run = run_id
            state.shadow = []
            state.event("promoted", run_id=run_id, score=gate.score)
        else:
            state.event("gate_failed", run_id=run_id, score=gate.score, error=gate.error)
        self._save(state)
        await asyncio.to_thread(self._annotate_run, run_id, gate)

    def _annotate_run(self, run_id: str, gate: GateResult) -> None:
        try:
            self.finetunes.registry.annotate(run_id, {"gate": gate.model_dump()})
        except Exception:
            logger.exception("could not record the gate result of %s", run_id)

    async def _gate(self, state: TaskState, run_id: str, adapter_path: str) -> GateResult:
        """Score the new student on held-out teacher answers, through the serving path."""
        spec = state.task_spec()
        metric, threshold = self.opt.gate_metric, self.opt.gate_threshold
        rows = [r for r in await asyncio.to_thread(self._rows, state) if r["split"] == "holdout"]
        adapter = AdapterRef(_adapter_name(state.task_id, run_id), adapter_path)
        params = spec.sampling(GATE_SEED)
        try:
            handle = model_handle(self.config, spec.student)
            calls = (
                generate(
                    handle, GenerationRequest(f"gate-{run_id}-{i}", r["prompt"], params, adapter)
                )
                for i, r in enumerate(rows)
            )
            # Bounded: a student replica that never answers must not hold the task forever.
            results = await asyncio.wait_for(asyncio.gather(*calls), self.opt.gate_timeout_s)
        except Exception as exc:  # the adapter does not load, a timeout: never promote it
            logger.exception("task %s: gate of %s failed", state.task_id, run_id)
            return GateResult(
                run_id=run_id,
                metric=metric,
                score=0.0,
                threshold=threshold,
                examples=len(rows),
                passed=False,
                error=f"{type(exc).__name__}: {exc}",
            )
        predictions = [r.choices[0].text for r in results]
        value = scoring.mean_score(
            metric, predictions, [r["completion"] for r in rows], spec.guided
        )
        return GateResult(
            run_id=run_id,
            metric=metric,
            score=value,
            threshold=threshold,
            examples=len(rows),
            passed=value >= threshold,
        )


def _adapter_name(task_id: str, run_id: str) -> str:
    return f"{task_id}-{run_id[-8:]}"


def actor_name(config: Config) -> str:
    """One optimizer per Serve application: its tasks, routes and storage belong to it."""
    return f"{ACTOR_PREFIX}-{config.serve.app_name}"


def get_optimizer(config: Config) -> Any:
    """The application's optimizer actor (created on first use; survives its creator).

    An existing actor keeps the config it was created with; ``llmvm serve`` of a changed
    config under the same app name should restart it (``ray.kill`` by name) to apply it.
    """
    actor = ray.remote(OptimizerActor).options(
        name=actor_name(config),
        namespace=config.ray.namespace,
        lifetime="detached",
        get_if_exists=True,
        max_restarts=-1,
        max_task_retries=-1,
        num_cpus=0,
        max_concurrency=64,
    )
    return actor.remote(config)
