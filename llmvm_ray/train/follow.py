"""Watching a fine-tune in the foreground, where Ctrl+C (or ``ray job stop``) means cancel.

Used by ``llmvm finetune start --wait`` and ``jobs/finetune.py``. Signal handlers only set a
flag; the cancel itself (a Ray call) happens in the polling loop, never inside a handler.
The first SIGINT/SIGTERM cancels the run and keeps following it until it is CANCELLED (so
the caller sees that the resources are back); a second one stops waiting at once — the run's
supervisor still finishes the cancel on its own.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from llmvm_ray.errors import ConflictError
from llmvm_ray.registry.records import FinetuneRun, RunStatus

EXIT_CODES = {RunStatus.SUCCEEDED: 0, RunStatus.FAILED: 1, RunStatus.CANCELLED: 130}


def describe(run: FinetuneRun) -> str:
    """One status line: status, step/total, loss, rate, ETA (or why it is queued)."""
    parts = [f"{run.id} {run.status}"]
    if run.cancel_requested_at and not run.status.terminal:
        parts.append("(cancelling)")
    p = run.progress
    if run.status == RunStatus.QUEUED and run.queue_reason:
        parts.append(run.queue_reason)
    elif p.total_steps:
        parts.append(f"step {p.step}/{p.total_steps}")
        if p.loss is not None:
            parts.append(f"loss {p.loss:.4f}")
        if p.steps_per_s:
            parts.append(f"{p.steps_per_s:.2f} steps/s")
        if p.eta_s is not None and not run.status.terminal:
            parts.append(f"ETA {p.eta_s:.0f}s")
        if p.attempt > 1:
            parts.append(f"attempt {p.attempt} (resumed from step {p.resumed_from_step})")
    if run.status == RunStatus.SUCCEEDED and run.metrics:
        parts.append(
            ", ".join(f"{k} {v:.4g}" for k, v in run.metrics.items() if k in _SUMMARY_KEYS)
        )
    if run.error:
        parts.append(f"error: {run.error.splitlines()[0]}")
    return " ".join(parts)


_SUMMARY_KEYS = ("eval_loss", "exact_match", "train_loss")


def follow(
    service: Any,  # FinetuneService (typed loosely to keep this module import-light)
    run_id: str,
    echo: Callable[[str], None],
    poll_s: float = 0.5,
    signals: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM),
) -> FinetuneRun:
    """Print progress until the run is terminal; the first signal cancels it."""
    received: list[int] = []
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in signals:
            previous[sig] = signal.signal(sig, lambda signum, _frame: received.append(signum))
    try:
        last = ""
        cancel_sent = False
        while True:
            if len(received) > 1:
                echo(f"{run_id}: stopped waiting; the run finishes cancelling on its own")
                return service.get(run_id)
            if received and not cancel_sent:
                cancel_sent = True
                echo(f"{run_id}: cancelling (signal {received[0]}); again to stop waiting")
                try:
                    service.cancel(run_id)
                except ConflictError as exc:
                    echo(f"{run_id}: {exc.message}")
            run = service.get(run_id)
            line = describe(run)
            if line != last:
                echo(line)
                last = line
            if run.status.terminal:
                return run
            time.sleep(poll_s)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
