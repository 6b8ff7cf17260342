"""What the registry remembers about one fine-tune, and which status changes are legal.

A run record is plain data (pydantic) so it round-trips through JSON on disk and through
Ray between the registry actor, supervisors, the CLI and the HTTP layer unchanged.
"""

from __future__ import annotations

import time
import uuid
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class RunStatus(StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED})

# Legal moves; anything else is a bug in the caller and is refused by the registry.
TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    RunStatus.QUEUED: frozenset({RunStatus.RUNNING, RunStatus.FAILED, RunStatus.CANCELLED}),
    RunStatus.RUNNING: frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED}),
    RunStatus.SUCCEEDED: frozenset(),
    RunStatus.FAILED: frozenset(),
    RunStatus.CANCELLED: frozenset(),
}


def new_run_id() -> str:
    """OpenAI-style job id (``ftjob-`` + 24 hex digits)."""
    return "ftjob-" + uuid.uuid4().hex[:24]


class Record(BaseModel):
    model_config = ConfigDict(extra="ignore")  # old files with dropped fields still load


class DatasetInfo(Record):
    """The frozen rows a run trains on (its snapshot) and where they came from."""

    uri: str = Field(description="The run's own snapshot file.")
    rows: int = Field(description="Rows in the snapshot.")
    content_hash: str = Field(description="sha256 over the snapshot's prompt/completion pairs.")
    source: str = Field(description="The dataset the user named (file or folder).")


class Progress(Record):
    """Live training progress, pushed while the run trains."""

    step: int = 0
    total_steps: int = 0
    epoch: int = 0
    loss: float | None = None
    lr: float | None = None
    steps_per_s: float | None = None
    eta_s: float | None = None
    elapsed_s: float = 0.0
    attempt: int = 0  # worker-group starts: > 1 means it resumed after a failure
    resumed_from_step: int | None = None


class WorkerInfo(Record):
    rank: int
    pid: int
    node_id: str
    attempt: int = 1


class FinetuneRun(Record):
    """One fine-tune: inputs, status with timestamps, live and final metrics, outputs."""

    id: str
    tenant: str = "default"
    task_id: str | None = None
    base_model: str = Field(description="What the user asked for (model name, path or hub id).")
    base_model_path: str = Field(description="The weights actually loaded (folder or hub id).")
    context: str | None = Field(None, description="The task's stable context (base prompt).")
    dataset: DatasetInfo
    params: dict[str, Any] = Field(description="The full, validated TrainConfig of the run.")
    seed: int
    origin: str = Field("api", description="Who started it: api, cli or job.")
    metadata: dict[str, str] = Field(default_factory=dict)

    status: RunStatus = RunStatus.QUEUED
    created_at: float = Field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    updated_at: float = Field(default_factory=time.time)
    cancel_requested_at: float | None = None
    cancel_mode: str | None = Field(
        None, description="How a cancel ended it: queued, cooperative, hard or lost."
    )
    queue_reason: str | None = None

    supervisor: str | None = Field(None, description="Named actor driving the run.")
    workers: list[WorkerInfo] = Field(default_factory=list)
    placement_group_id: str | None = Field(
        None, description="The workers' placement group (removed by reconciling if orphaned)."
    )
    progress: Progress = Field(default_factory=Progress)
    metrics: dict[str, float] = Field(default_factory=dict, description="Final metrics.")
    checkpoint_path: str | None = None
    checkpoint_step: int | None = None
    output_path: str | None = Field(None, description="Adapter (lora) or model (full) folder.")
    output_format: str | None = Field(None, description="peft_adapter or hf_model.")
    error: str | None = None
    annotations: dict[str, Any] = Field(
        default_factory=dict,
        description="Notes others attach, even after the end (e.g. the optimizer's gate).",
    )

    @property
    def adapter_path(self) -> str | None:
        return self.output_path if self.output_format == "peft_adapter" else None
