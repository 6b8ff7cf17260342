"""Prompt/completion examples as Parquet under ``storage_path``.

Layout: ``datasets/{tenant}/{task_id}/part-{time}-{uuid}.parquet``. Appending writes a new
part file and never rewrites old ones, so the optimizer can record teacher answers from
many replicas at once without locking; a reader sees every complete part. A dataset is
either one Parquet file or a folder of parts (read in name order, i.e. oldest first).

A fine-tune never trains on a folder that is still growing: it first ``snapshot``s the rows
into one file of its own, whose row count and content hash the registry records.
"""

from __future__ import annotations

import hashlib
import io
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from llmvm_ray.errors import InvalidRequestError, NotFoundError
from llmvm_ray.store.fs import Storage, safe_component

PROMPT = "prompt"
COMPLETION = "completion"
REQUIRED_COLUMNS = (PROMPT, COMPLETION)


@dataclass(frozen=True)
class DatasetRef:
    """Where a dataset is, how many rows it has and a hash of exactly those rows."""

    uri: str
    rows: int
    content_hash: str


def content_hash(rows: Iterable[Mapping[str, Any]]) -> str:
    """``sha256:<hex>`` over the (prompt, completion) pairs in order.

    Each field is length-prefixed so that no two different row lists hash alike by moving
    text across a field boundary. Other columns do not count: they don't change training.
    """
    digest = hashlib.sha256()
    for row in rows:
        for key in REQUIRED_COLUMNS:
            data = str(row[key]).encode()
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(data)
    return "sha256:" + digest.hexdigest()


def dataset_path(tenant: str, task_id: str) -> str:
    """Path, relative to the storage root, of a task's recorded examples."""
    return f"datasets/{safe_component(tenant, 'tenant')}/{safe_component(task_id, 'task id')}"


def append_examples(
    storage: Storage, tenant: str, task_id: str, rows: Sequence[Mapping[str, Any]]
) -> DatasetRef:
    """Add ``rows`` (each with string ``prompt`` and ``completion``) as a new part file.

    Extra columns (e.g. ``source``, ``model``) are kept. Returns the ref of the new part;
    ``describe(storage, dataset_path(tenant, task_id))`` describes the whole dataset.
    """
    table = _to_table(rows)
    name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
    path = storage.path(dataset_path(tenant, task_id), name)
    _write_table(storage, path, table)
    return DatasetRef(storage.to_uri(path), table.num_rows, content_hash(table.to_pylist()))


def write_examples(storage: Storage, uri: str, rows: Sequence[Mapping[str, Any]]) -> DatasetRef:
    """Write ``rows`` as one Parquet file at ``uri`` (absolute, or relative to the root)."""
    table = _to_table(rows)
    target, path = storage.locate(uri)
    _write_table(target, path, table)
    return DatasetRef(target.to_uri(path), table.num_rows, content_hash(table.to_pylist()))


def read_examples(storage: Storage, uri: str) -> list[dict[str, Any]]:
    """All rows of the dataset at ``uri`` (a file or a folder of parts).

    Raises ``NotFoundError`` if nothing is there and ``InvalidRequestError`` (param
    ``dataset``) for unreadable files, missing columns or rows whose prompt or completion is
    not a string.
    """
    table = _read_table(storage, uri)
    rows = table.to_pylist()
    for i, row in enumerate(rows):
        for key in REQUIRED_COLUMNS:
            if not isinstance(row.get(key), str):
                raise InvalidRequestError(
                    f"dataset {uri}: row {i} has no string {key!r} (got {row.get(key)!r})",
                    param="dataset",
                )
    return rows


def describe(storage: Storage, uri: str) -> DatasetRef:
    """Row count and content hash of the dataset at ``uri``, validating it on the way."""
    rows = read_examples(storage, uri)
    target, path = storage.locate(uri)
    return DatasetRef(target.to_uri(path), len(rows), content_hash(rows))


def snapshot(storage: Storage, source_uri: str, target_uri: str) -> DatasetRef:
    """Freeze the rows at ``source_uri`` into one file at ``target_uri``; refuse no rows.

    Only ``prompt`` and ``completion`` are copied: what the run trains on, nothing else.
    """
    rows = read_examples(storage, source_uri)
    if not rows:
        raise InvalidRequestError(f"dataset {source_uri} has no rows", param="dataset")
    return write_examples(
        storage, target_uri, [{k: row[k] for k in REQUIRED_COLUMNS} for row in rows]
    )


# -- helpers -----------------------------------------------------------------------------------


def _to_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    if not rows:
        return pa.table({PROMPT: pa.array([], pa.string()), COMPLETION: pa.array([], pa.string())})
    for i, row in enumerate(rows):
        for key in REQUIRED_COLUMNS:
            if not isinstance(row.get(key), str):
                raise InvalidRequestError(f"row {i} needs a string {key!r}", param=key)
    table = pa.Table.from_pylist([dict(row) for row in rows])
    # Required columns first, always as strings, whatever order the caller used.
    others = [c for c in table.column_names if c not in REQUIRED_COLUMNS]
    return table.select([*REQUIRED_COLUMNS, *others])


def _write_table(storage: Storage, path: str, table: pa.Table) -> None:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    storage.write_bytes(path, buffer.getvalue())


def _read_table(storage: Storage, uri: str) -> pa.Table:
    where, path = storage.locate(uri)
    if where.is_dir(path):
        files = where.list_files(path, ".parquet")
    elif where.exists(path):
        files = [path]
    else:
        raise NotFoundError(f"dataset {uri} not found", param="dataset")
    if not files:
        raise InvalidRequestError(f"dataset {uri} has no rows (no .parquet files)", "dataset")
    tables = []
    for file in files:
        try:
            tables.append(pq.read_table(file, filesystem=where.filesystem))
        except (OSError, pa.ArrowInvalid) as exc:
            raise InvalidRequestError(
                f"dataset {uri}: {file} is not readable Parquet ({exc})", param="dataset"
            ) from exc
    for file, table in zip(files, tables, strict=True):
        missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
        if missing:
            raise InvalidRequestError(
                f"dataset {uri}: {file} lacks column(s) {missing}", param="dataset"
            )
    # Extra columns (split, source, ...) are kept; parts without one read it as null.
    return pa.concat_tables(tables, promote_options="permissive")
