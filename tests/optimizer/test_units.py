"""Task identity and the student-vs-teacher metrics."""

from __future__ import annotations

import pytest

from llmvm_ray.engine.types import GuidedSpec
from llmvm_ray.optimizer import scoring
from llmvm_ray.optimizer.task import TaskSpec, tenant_of


def spec(**changes):
    base = dict(
        tenant="t1",
        context="Format the date.\n",
        teacher="teacher",
        student="student",
        max_tokens=16,
    )
    return TaskSpec(**{**base, **changes})


def test_task_id_is_stable_and_covers_what_changes_outputs():
    assert spec().task_id == spec().task_id
    assert spec().task_id.startswith("task-")
    for change in (
        {"tenant": "t2"},
        {"context": "Other.\n"},
        {"teacher": "big"},
        {"student": "small"},
        {"max_tokens": 17},
        {"temperature": 0.5},
        {"top_p": 0.9},
        {"stop": ("\n",)},
        {"guided": GuidedSpec(regex="[0-9]+")},
    ):
        assert spec(**change).task_id != spec().task_id, change


def test_task_spec_round_trips_through_plain_data():
    original = spec(stop=("a", "b"), guided=GuidedSpec(choices=("x", "y")))
    again = TaskSpec.from_dict(original.to_dict())
    assert again == original and again.task_id == original.task_id


def test_tenant_ids_hide_the_key():
    assert tenant_of(None) == "default"
    tid = tenant_of("sk-secret")
    assert tid.startswith("t-") and "secret" not in tid
    assert tid == tenant_of("sk-secret") != tenant_of("sk-other")


@pytest.mark.parametrize(
    "metric, prediction, reference, expected",
    [
        ("exact", "2021-03-05", "2021-03-05", 1.0),
        ("exact", " 2021-03-05", "2021-03-05", 0.0),
        ("normalized", " Paris. ", "paris", 1.0),
        ("normalized", "Paris is", "paris", 0.0),
        ("token_f1", "the cat sat", "the cat", 0.8),
        ("token_f1", "", "", 1.0),
        ("token_f1", "dog", "cat", 0.0),
    ],
)
def test_metrics(metric, prediction, reference, expected):
    assert scoring.score(metric, prediction, reference) == pytest.approx(expected)


@pytest.mark.parametrize(
    "guided, text, ok",
    [
        (GuidedSpec(choices=("yes", "no")), "yes", True),
        (GuidedSpec(choices=("yes", "no")), "maybe", False),
        (GuidedSpec(regex=r"[0-9]{4}-[0-9]{2}"), "2021-03", True),
        (GuidedSpec(regex=r"[0-9]{4}-[0-9]{2}"), "2021-3", False),
        (GuidedSpec(type="integer"), "-42", True),
        (GuidedSpec(type="integer"), "4.2", False),
        (GuidedSpec(type="float"), "4.25", True),
        (GuidedSpec(json_schema={"type": "object", "required": ["a"]}), '{"a": 1}', True),
        (GuidedSpec(json_schema={"type": "object", "required": ["a"]}), '{"b": 1}', False),
        (GuidedSpec(json_schema={"type": "object"}), "{not json", False),
        (None, "anything", True),
    ],
)
def test_validity(guided, text, ok):
    assert scoring.is_valid(text, guided) is ok
    assert scoring.score("valid", text, "", guided) == float(ok)


def test_mean_and_agreement():
    assert scoring.mean_score("exact", ["a", "b"], ["a", "c"]) == 0.5
    assert scoring.mean_score("exact", [], []) == 0.0
    with pytest.raises(ValueError):
        scoring.mean_score("exact", ["a"], [])
    assert scoring.agrees("normalized", "A", "a", None)
    assert not scoring.agrees("exact", "A", "a", None)
    assert scoring.agrees("token_f1", "the cat sat", "the cat", None)
