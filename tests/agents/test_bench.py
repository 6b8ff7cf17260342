"""The evaluation suite's parts without a service: scoring, question selection (held-out
people), the step data's consistency with the data set, and the offline step-model path
(``llmvm agent train-steps`` then ``llmvm agent run --local-model``) on a briefly trained model."""

from __future__ import annotations

import json

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


def test_train_steps_then_run_with_the_local_model(tmp_path):
    runner = CliRunner()
    out = tmp_path / "steps"
    result = runner.invoke(app, ["agent", "train-steps", str(out), "--steps", "3", "--eval-n", "4"])
    assert result.exit_code == 0, result.output
    info = json.loads((out / "agent_steps.json").read_text())
    assert info["steps"] == 3 and 0 <= info["step_exact_match"] <= 1
    more = ["agent", "train-steps", str(out), "--steps", "2", "--eval-n", "4", "--resume"]
    result = runner.invoke(app, [*more, "--lr", "1e-3"])
    assert result.exit_code == 0, result.output
    info = json.loads((out / "agent_steps.json").read_text())
    assert info["steps"] == 5 and [p["lr"] for p in info["phases"]] == [2e-3, 1e-3]
    question = "What is the capital of the birthplace of Rumi?"
    args = ["agent", "run", question, "--agent", "flat", "--knowledge", "--local-model", str(out)]
    # Short completions: the model is barely trained, its steps are noise.
    result = runner.invoke(app, [*args, "--trace"], env={"LLMVM_AGENTS__STEP_MAX_TOKENS": "12"})
    assert result.exit_code == 0, result.output
    trace = json.loads(result.stdout[result.stdout.index("{") :])
    assert trace["question"] == question and trace["agent"] == "flat"
    assert trace["model_calls"] and all(c["served_by"] == "local" for c in trace["model_calls"])


def test_cli_rejects_bad_arguments(tmp_path):
    runner = CliRunner()
    assert runner.invoke(app, ["agent", "run", "q", "--agent", "sherlock"]).exit_code == 2
    assert runner.invoke(app, ["agent", "eval", "--agent", "flat"]).exit_code == 2
    bad = tmp_path / "tools.json"
    bad.write_text(json.dumps([{"description": "x", "url": "file:///etc/passwd"}]))
    result = runner.invoke(app, ["agent", "run", "q", "--tools", str(bad), "--local-model", "x"])
    assert result.exit_code == 2
