"""``llmvm synth run`` against a ``ray start --head`` cluster (worker actors on it), then the
same command again on the same folder: the second run resumes (nothing requested twice,
nothing duplicated). The teacher is the loopback stub: a remote OpenAI-compatible API's
stand-in, not one of our components."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from tests.journeys.conftest import llmvm, user_env
from tests.ops.test_jobs import synth_files
from tests.support.stub_teacher import StubTeacher

pytestmark = pytest.mark.ray


def test_synth_run_on_a_cluster_then_again_on_the_same_folder(head, tmp_path):
    with StubTeacher(["good"]) as stub:
        config, seeds = synth_files(tmp_path, stub)
        out = tmp_path / "out"
        args = ["synth", "run", str(seeds), "-o", str(out), "-c", str(config), "--target", "6"]
        first = llmvm(*args, env=user_env(head))
        assert first.returncode == 0, first.stdout + first.stderr
        requests_first = len(stub.requests)
        rows = pq.read_table(out / "data.parquet").to_pylist()
        assert len(rows) >= 6 and len({r["prompt"] for r in rows}) == len(rows)
        assert {r["source"] for r in rows} == {"synthesis"} and all(r["run_id"] for r in rows)
        stats = json.loads((out / "stats.json").read_text())
        again = llmvm(*args, env=user_env(head))
    assert again.returncode == 0, again.stdout + again.stderr
    assert len(stub.requests) == requests_first  # every unit was saved: nothing re-asked
    assert pq.read_table(out / "data.parquet").to_pylist() == rows
    assert json.loads((out / "stats.json").read_text())["totals"] == stats["totals"]
