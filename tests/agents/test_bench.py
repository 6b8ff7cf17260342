"""The evaluation suite's parts without a service: scoring, question selection (held-out
people), the step data's consistency with the data set, and the offline step-model path
(``llmvm agent train-steps`` through the real fine-tune pipeline, then ``llmvm agent run
--local-model``) on a briefly trained model."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from llmvm_ray.agents.bench.knowledge import is_heldout
from llmvm_ray.agents.bench.runner import is_correct, select_questions
from llmvm_ray.agents.bench.steps import flat_examples, question_steps
from llmvm_ray.cli import app


def test_answers_match_any_alias():
    aliases = ("Pretoria", "Bloemfontein", "Cape Town")
    assert is_correct("cape town", aliases)
    assert is_correct("The capital is Pretoria.", aliases)
    assert not is_correct("Cape", aliases) and not is_correct("", aliases)
    assert is_correct("33", ("33",)) and not is_correct("330", ("33",))


def test_heldout_people_are_disjoint_and_every_category_is_sampled(kb):
    held = select_questions(kb, 5, heldout=True)
    train = select_questions(kb, 5, heldout=False)
    assert len({q.category for q in held}) == 12 and len(held) == 60
    assert all(is_heldout(q.person) for q in held)
    assert not {q.person for q in held} & {q.person for q in train}
    assert select_questions(kb, 5, heldout=True) == held  # seeded


def test_step_data_follows_the_question_structure(kb):
    for q in kb.questions[::50]:
        steps = question_steps(q)
        prompt, completion = steps["split"]
        first, second = completion.split(" ||| ")
        assert first == q.q1 and "#1" in second and second.replace("#1", q.a1) == q.q2
        assert json.loads(steps["input_q1"][1]) == {q.key1: q.person}
        assert steps["final"][1] == q.a2
    extra = flat_examples()
    assert any(p.endswith("Sub-questions:") for p, _ in extra)
    assert any(c in ("yes", "no") for _, c in extra)


def _config_file(tmp_path):
    """Its own storage and registry, so the runs it makes are the only ones it sees."""
    path = tmp_path / "llmvm.toml"
    path.write_text(
        f"""storage_path = "{tmp_path / "store"}"
[registry]
actor_name = "test-agent-steps-{uuid.uuid4().hex[:8]}"
[train]
progress_interval_s = 0.2
resources_per_worker = {{ CPU = 0.5 }}
"""
    )
    return path


def test_train_steps_through_the_finetune_pipeline_then_run(ray_session, tmp_path):
    """train-steps writes a Parquet dataset, runs a full fine-tune with Ray Train, registers
    it, and installs the model; --resume fine-tunes that model further; the agent runs on it."""
    from llmvm_ray.config import load_config
    from llmvm_ray.registry.client import get_registry
    from llmvm_ray.registry.records import RunStatus

    runner = CliRunner()
    out = tmp_path / "steps"
    cfg_file = _config_file(tmp_path)
    args = ["agent", "train-steps", str(out), "--batch-size", "4", "--eval-n", "4"]
    result = runner.invoke(app, [*args, "--steps", "3", "--config", str(cfg_file)])
    assert result.exit_code == 0, result.output
    info = json.loads((out / "agent_steps.json").read_text())
    assert info["steps"] == 3 and 0 <= info["step_exact_match"] <= 1
    assert info["step_eval_examples"] == 4
    first = info["phases"][0]

    registry = get_registry(load_config(cfg_file))
    try:
        run = registry.get(first["run_id"])
        assert run.status == RunStatus.SUCCEEDED and run.origin == "cli"
        assert run.task_id == "agent-steps" and run.output_format == "hf_model"
        assert run.dataset.rows == 3 * 4 + 4 and run.params["method"] == "full"
        assert run.base_model_path == str((out / "base").resolve())
        assert run.progress.step == 3
        # The cosine schedule ran to its floor: 10 % of the peak rate after the last step.
        assert run.progress.lr == pytest.approx(0.1 * 2e-3)
        assert pq.read_table(first["dataset"]).column_names[:2] == ["prompt", "completion"]
        # The step-model folder holds exactly the run's output, not the untrained base.
        installed = (out / "model.safetensors").read_bytes()
        assert installed == (Path(run.output_path) / "model.safetensors").read_bytes()
        assert installed != (out / "base" / "model.safetensors").read_bytes()

        more = [*args, "--steps", "2", "--resume", "--lr", "1e-3", "--config", str(cfg_file)]
        result = runner.invoke(app, more)
        assert result.exit_code == 0, result.output
        info = json.loads((out / "agent_steps.json").read_text())
        assert info["steps"] == 5 and [p["lr"] for p in info["phases"]] == [2e-3, 1e-3]
        second = registry.get(info["phases"][1]["run_id"])
        assert second.status == RunStatus.SUCCEEDED
        assert second.base_model_path == run.output_path  # phase 2 starts from phase 1
    finally:
        ray_session.kill(registry.handle)

    question = "What is the capital of the birthplace of Rumi?"
    args = ["agent", "run", question, "--agent", "flat", "--knowledge", "--local-model", str(out)]
    # Short completions: the model is barely trained, its steps are noise.
    result = runner.invoke(app, [*args, "--trace"], env={"LLMVM_AGENTS__STEP_MAX_TOKENS": "12"})
    assert result.exit_code == 0, result.output
    trace = json.loads(result.stdout[result.stdout.index("{") :])
    assert trace["question"] == question and trace["agent"] == "flat"
    assert trace["model_calls"] and all(c["served_by"] == "local" for c in trace["model_calls"])


def test_train_steps_resume_needs_a_model(tmp_path):
    result = CliRunner().invoke(app, ["agent", "train-steps", str(tmp_path), "--resume"])
    assert result.exit_code == 2 and "no step model to resume" in result.output


def test_cli_rejects_bad_arguments(tmp_path):
    runner = CliRunner()
    assert runner.invoke(app, ["agent", "run", "q", "--agent", "sherlock"]).exit_code == 2
    assert runner.invoke(app, ["agent", "eval", "--agent", "flat"]).exit_code == 2
    bad = tmp_path / "tools.json"
    bad.write_text(json.dumps([{"description": "x", "url": "file:///etc/passwd"}]))
    result = runner.invoke(app, ["agent", "run", "q", "--tools", str(bad), "--local-model", "x"])
    assert result.exit_code == 2
