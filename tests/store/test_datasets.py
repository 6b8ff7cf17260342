"""Parquet datasets under storage_path: append, read, describe, snapshot, and bad input."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llmvm_ray.errors import InvalidRequestError, NotFoundError
from llmvm_ray.store import datasets
from llmvm_ray.store.fs import Storage, safe_component

ROWS = [{"prompt": f"Input: {i}\nOutput:", "completion": f" {i * 2}"} for i in range(5)]


@pytest.fixture
def storage(tmp_path):
    return Storage.from_uri(str(tmp_path / "store"))


def test_append_parts_and_read_them_back_in_order(storage):
    first = datasets.append_examples(storage, "acme", "double", ROWS[:2])
    second = datasets.append_examples(
        storage, "acme", "double", [dict(r, source="teacher") for r in ROWS[2:]]
    )
    assert (first.rows, second.rows) == (2, 3)
    path = datasets.dataset_path("acme", "double")
    rows = datasets.read_examples(storage, path)
    assert [r["prompt"] for r in rows] == [r["prompt"] for r in ROWS]
    whole = datasets.describe(storage, path)
    assert whole.rows == 5
    assert whole.content_hash == datasets.content_hash(ROWS)
    assert whole.uri == storage.uri(path)


def test_content_hash_depends_on_rows_and_boundaries():
    a = datasets.content_hash([{"prompt": "ab", "completion": "c"}])
    b = datasets.content_hash([{"prompt": "a", "completion": "bc"}])
    assert a != b
    assert a == datasets.content_hash([{"prompt": "ab", "completion": "c", "extra": 1}])
    assert a.startswith("sha256:")


def test_snapshot_freezes_prompt_and_completion(storage):
    datasets.append_examples(storage, "t", "k", [dict(r, source="x") for r in ROWS])
    ref = datasets.snapshot(storage, datasets.dataset_path("t", "k"), "runs/r1/data.parquet")
    table = pq.read_table(storage.path("runs/r1/data.parquet"))
    assert table.column_names == ["prompt", "completion"]
    assert ref.rows == 5 and ref.content_hash == datasets.content_hash(ROWS)
    # Later appends do not change the snapshot.
    datasets.append_examples(storage, "t", "k", ROWS[:1])
    assert datasets.describe(storage, ref.uri).content_hash == ref.content_hash


def test_absolute_paths_work_too(storage, tmp_path):
    ref = datasets.write_examples(storage, str(tmp_path / "elsewhere.parquet"), ROWS)
    assert ref.uri == str(tmp_path / "elsewhere.parquet")
    assert datasets.describe(storage, ref.uri).rows == 5


def test_missing_dataset_is_not_found(storage):
    with pytest.raises(NotFoundError):
        datasets.read_examples(storage, "datasets/nobody/nothing")


def test_empty_dataset_cannot_be_snapshotted(storage):
    datasets.write_examples(storage, "empty.parquet", [])
    assert datasets.describe(storage, "empty.parquet").rows == 0
    with pytest.raises(InvalidRequestError, match="no rows"):
        datasets.snapshot(storage, "empty.parquet", "snap.parquet")
    storage.filesystem.create_dir(storage.path("emptydir"))
    with pytest.raises(InvalidRequestError, match="no rows"):
        datasets.read_examples(storage, "emptydir")


def test_bad_rows_and_files_are_invalid(storage):
    with pytest.raises(InvalidRequestError):
        datasets.append_examples(storage, "t", "k", [{"prompt": "p"}])
    storage.filesystem.create_dir(storage.root)
    pq.write_table(pa.table({"prompt": ["a"], "answer": ["b"]}), storage.path("bad.parquet"))
    with pytest.raises(InvalidRequestError, match="lacks column"):
        datasets.read_examples(storage, "bad.parquet")
    pq.write_table(
        pa.table({"prompt": ["a", "b"], "completion": ["x", None]}), storage.path("null.parquet")
    )
    with pytest.raises(InvalidRequestError, match="row 1"):
        datasets.read_examples(storage, "null.parquet")
    storage.write_bytes(storage.path("junk.parquet"), b"not parquet at all")
    with pytest.raises(InvalidRequestError, match="not readable"):
        datasets.read_examples(storage, "junk.parquet")


def test_path_components_are_checked():
    assert safe_component("tenant-1.a_b", "tenant") == "tenant-1.a_b"
    for bad in ("../x", "a/b", "", ".", "..", "x" * 200):
        with pytest.raises(ValueError):
            safe_component(bad, "tenant")


def test_atomic_write_leaves_no_temporaries(storage):
    path = storage.path("registry/runs/a.json")
    storage.write_bytes(path, b"1")
    storage.write_bytes(path, b"2")
    assert storage.read_bytes(path) == b"2"
    assert storage.list_files(storage.path("registry/runs")) == [path]
