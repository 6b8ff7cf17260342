"""The registry's durable store: one JSON file per run under ``registry/runs/``.

Why one file per run: every change rewrites only that run's file, atomically (a rename
locally, a single PUT on object stores), so a crash at any instant leaves each run either
before or after its last change, never torn, and nothing ever needs compaction. Loading
reads every file once when the registry (re)starts; at thousands of runs that is still
well under a second locally.
"""

from __future__ import annotations

import json
import logging

from llmvm_ray.registry.records import FinetuneRun
from llmvm_ray.store.fs import Storage, safe_component

logger = logging.getLogger(__name__)

RUNS_DIR = "registry/runs"


class RunStore:
    """Reads and writes run records under a ``Storage`` root."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    @property
    def uri(self) -> str:
        return self._storage.uri(RUNS_DIR)

    def save(self, run: FinetuneRun) -> None:
        path = self._storage.path(RUNS_DIR, f"{safe_component(run.id, 'run id')}.json")
        self._storage.write_bytes(path, run.model_dump_json(indent=1).encode())

    def load_all(self) -> dict[str, FinetuneRun]:
        """Every stored run by id. An unreadable file is logged and skipped, not fatal:
        one corrupt record must not take the whole registry (and serving) down."""
        runs: dict[str, FinetuneRun] = {}
        for path in self._storage.list_files(self._storage.path(RUNS_DIR), ".json"):
            try:
                run = FinetuneRun.model_validate(json.loads(self._storage.read_bytes(path)))
            except Exception as exc:  # noqa: BLE001 - see docstring
                logger.error("skipping unreadable run record %s: %s", path, exc)
                continue
            runs[run.id] = run
        return runs
