"""The batch job: kill-and-resume with no lost and no duplicated rows, bad seeds recorded.

The teacher is the loopback stub (an external service stand-in); the job runs in-process
(``--local``), so no Ray is needed: what is under test is the job's own bookkeeping.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from llmvm_ray.config import load_config
from llmvm_ray.errors import ConflictError, InvalidRequestError
from llmvm_ray.synthesis.dedup import Deduper
from llmvm_ray.synthesis.job import run_job
from tests.support.stub_teacher import StubTeacher

ROOT = Path(__file__).resolve().parents[2]


def write_seeds(path: Path, n: int = 6, extra: list[str] = ()) -> Path:
    lines = [
        json.dumps({"id": f"s{i}", "prompt": f"Seed question {i}?", "completion": f" {i}"})
        for i in range(n)
    ]
    path.write_text("\n".join([*lines, *extra]) + "\n")
    return path


def synthesis_settings(**kw) -> dict:
    return {
        "seed_batch_size": 2,
        "seed_examples": 2,
        "request_retries": 1,
        "backoff_s": 0.01,
        "max_in_flight": 2,
        "embedding_model": None,
        "encoding": "json",
        "stats_interval_s": 0.5,
        **kw,
    }


def write_config(path: Path, storage: Path, stub: StubTeacher) -> Path:
    # TOML has no null: an empty embedding_model turns semantic dedup off.
    s = {**synthesis_settings(), "embedding_model": ""}
    body = "\n".join(f"{k} = {json.dumps(v)}" for k, v in s.items())
    path.write_text(
        f'storage_path = "{storage}"\n[teacher]\nbase_url = "{stub.url}"\nmodel = "stub"\n'
        f"[synthesis]\n{body}\n"
    )
    return path


def unit_files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.glob("units/*/*.json"))}


def test_kill_and_resume_loses_and_duplicates_nothing(tmp_path):
    seeds = write_seeds(tmp_path / "seeds.jsonl")
    out = tmp_path / "out"
    target = 40
    with StubTeacher(["slow"], slow_s=0.25) as stub:
        config_file = write_config(tmp_path / "c.toml", tmp_path / "storage", stub)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        cmd = [sys.executable, str(ROOT / "jobs/synthesize.py"), "--config", str(config_file)]
        cmd += ["--local", "--seeds", str(seeds), "--output", str(out), "--target", str(target)]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while len(unit_files(out)) < 3 and proc.poll() is None:
                assert time.monotonic() < deadline, "the job saved no units"
                time.sleep(0.05)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert proc.returncode == -signal.SIGKILL, "the job finished before it was killed"
        before = unit_files(out)
        assert 3 <= len(before) < target // 2
        assert not (out / "data.parquet").exists()

        config = load_config(config_file)
        report = run_job(config, str(seeds), str(out), target=target, use_pool=False)
    after = unit_files(out)
    assert report["reached"]
    assert all(after[name] == data for name, data in before.items())  # not re-run
    rows = pq.read_table(out / "data.parquet").to_pylist()
    assert len(rows) == target
    prompts = [r["prompt"] for r in rows]
    assert len(set(prompts)) == target  # nothing duplicated
    saved = [row for data in after.values() for row in json.loads(data)["rows"]]
    # nothing lost: the output is exactly the saved rows, deduped in unit order, up to target
    unique, _ = Deduper(config.synthesis).filter(saved)
    assert [r["prompt"] for r in unique][:target] == prompts
    assert {r["run_id"] for r in rows} == {json.loads((out / "run.json").read_text())["run_id"]}
    stats = json.loads((out / "stats.json").read_text())
    assert stats["tasks"]["default"]["kept"] == target
    assert stats["totals"]["requests"] == len(after)


def test_a_stopped_run_loses_only_requests_in_flight_and_resumes(tmp_path):
    """``should_stop`` (what jobs/synthesize.py's SIGTERM handler sets) cancels the run
    mid-wave: every finished unit is saved at once, so at most ``max_in_flight`` requests
    are lost; no data.parquet; the same call again completes it."""
    seeds = write_seeds(tmp_path / "seeds.jsonl")
    out, target = tmp_path / "out", 40
    with StubTeacher(["slow"], slow_s=0.2) as stub:
        config = load_config(
            overrides={
                "storage_path": str(tmp_path),
                "teacher": {"base_url": stub.url, "model": "stub"},
                "synthesis": synthesis_settings(),
            }
        )
        stopped = run_job(
            config,
            str(seeds),
            str(out),
            target=target,
            use_pool=False,
            should_stop=lambda: len(stub.requests) >= 5,  # mid-wave (a wave is 8 here)
        )
        saved = unit_files(out)
        asked = len(stub.requests)
        assert stopped["stopped"] and not stopped["reached"]
        assert 0 < stopped["units_saved"] == len(saved) < target // 2
        assert asked - len(saved) <= config.synthesis.max_in_flight  # only those in flight
        assert not (out / "data.parquet").exists()
        assert json.loads((out / "stats.json").read_text())["stopped"]

        report = run_job(config, str(seeds), str(out), target=target, use_pool=False)
    after = unit_files(out)
    assert report["reached"] and not report["stopped"]
    assert all(after[name] == data for name, data in saved.items())
    assert len(stub.requests) - asked == len(after) - len(saved)  # saved units not re-asked
    rows = pq.read_table(out / "data.parquet").to_pylist()
    assert len(rows) == target == len({r["prompt"] for r in rows})


def test_resume_with_different_arguments_is_refused(tmp_path):
    seeds = write_seeds(tmp_path / "seeds.jsonl")
    with StubTeacher(["good"]) as stub:
        config = load_config(
            overrides={
                "storage_path": str(tmp_path),
                "teacher": {"base_url": stub.url, "model": "stub"},
                "synthesis": synthesis_settings(),
            }
        )
        report = run_job(config, str(seeds), str(tmp_path / "o"), target=4, use_pool=False)
        assert report["reached"]
        again = run_job(config, str(seeds), str(tmp_path / "o"), target=4, use_pool=False)
        assert again["run_id"] == report["run_id"] and len(stub.requests) == 2  # nothing new
        with pytest.raises(ConflictError, match="target"):
            run_job(config, str(seeds), str(tmp_path / "o"), target=6, use_pool=False)


def test_bad_seeds_are_recorded_and_empty_seeds_refused(tmp_path):
    seeds = write_seeds(
        tmp_path / "seeds.jsonl",
        n=3,
        extra=["{not json", json.dumps({"prompt": "", "completion": "x"}), json.dumps([1])],
    )
    with StubTeacher(["good"]) as stub:
        config = load_config(
            overrides={
                "storage_path": str(tmp_path),
                "teacher": {"base_url": stub.url, "model": "stub"},
                "synthesis": synthesis_settings(),
            }
        )
        report = run_job(config, str(seeds), str(tmp_path / "o"), target=2, use_pool=False)
        assert report["reached"] and report["bad_seeds"] == 3
        errors = pq.read_table(tmp_path / "o" / "errors.parquet").to_pylist()
        assert sorted(e["kind"] for e in errors) == ["bad_seed"] * 3
        empty = tmp_path / "empty.jsonl"
        empty.write_text("\n")
        with pytest.raises(InvalidRequestError, match="no usable seed"):
            run_job(config, str(empty), str(tmp_path / "o2"), use_pool=False)
        with pytest.raises(Exception, match="not found"):
            run_job(config, str(tmp_path / "missing.jsonl"), str(tmp_path / "o3"))


def test_cli_synth_run(tmp_path):
    """`llmvm synth run --local`: exit 0 with the funnel when the target is reached, exit 3
    with the reason when the teacher only writes garbage."""
    from typer.testing import CliRunner

    from llmvm_ray.cli import app

    seeds = write_seeds(tmp_path / "seeds.jsonl")
    for script, out, code, says in [
        (["fenced"], "ok", 0, "target reached: 4 kept"),
        (["garbage"], "bad", 3, "attempt budget spent: 2 of 2 requests made, 0 of 4 kept"),
    ]:
        with StubTeacher(script) as stub:
            env = {
                "LLMVM_STORAGE_PATH": str(tmp_path),
                "LLMVM_TEACHER__BASE_URL": stub.url,
                "LLMVM_TEACHER__MODEL": "stub",
            }
            args = ["synth", "run", str(seeds), "-o", str(tmp_path / out), "--local"]
            args += ["--target", "4", "--set", "embedding_model=", "--set", "seed_batch_size=2"]
            args += ["--set", "attempt_budget=1", "--set", "request_retries=0"]
            result = CliRunner().invoke(app, args, env=env)
        assert result.exit_code == code, result.output
        assert says in result.output
    assert len(pq.read_table(tmp_path / "ok" / "data.parquet")) == 4
    assert len(pq.read_table(tmp_path / "bad" / "data.parquet")) == 0
