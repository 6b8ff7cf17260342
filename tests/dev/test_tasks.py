"""Synthetic tasks: targets are right, prompts follow the documented convention, data is
deterministic and the held-out split never leaks into training data."""

from __future__ import annotations

import datetime
import random

import pytest

from llmvm_ray.dev.tasks import TASK_NAMES, TASKS, get_task, make_examples


def _independent_answer(name: str, source: str) -> str:
    """Each task's answer computed a second, independent way."""
    if name == "date":
        return datetime.datetime.strptime(source, "%B %d, %Y").date().isoformat()
    if name == "reverse":
        return "".join(reversed(source))
    if name == "sort":
        return " ".join(sorted(source.split(), key=int))
    raise AssertionError(f"no independent check for task {name!r}")


def test_required_tasks_exist() -> None:
    assert {"date", "reverse", "sort"} <= set(TASK_NAMES)
    assert get_task("date").sample(random.Random(0))  # returns a pair


@pytest.mark.parametrize("name", TASK_NAMES)
def test_targets_are_correct(name: str) -> None:
    task = get_task(name)
    rng = random.Random(1)
    for _ in range(300):
        source, target = task.sample(rng)
        assert target == _independent_answer(name, source)
        assert task.score(target, target)
        assert task.score(f"  {target}\n", target)
        assert not task.score(target + "x", target)


def test_task_shapes() -> None:
    rng = random.Random(2)
    for _ in range(200):
        word, _ = get_task("reverse").sample(rng)
        assert 3 <= len(word) <= 6 and word.isalpha() and word.islower()
        digits, _ = get_task("sort").sample(rng)
        assert 3 <= len(digits.split()) <= 5
        assert get_task("date").sample(rng)[0].split()[0] in {
            datetime.date(2000, m, 1).strftime("%B") for m in range(1, 13)
        }


@pytest.mark.parametrize("name", TASK_NAMES)
def test_prompt_convention(name: str) -> None:
    task = get_task(name)
    teacher = task.format_prompt("abc")
    student = task.format_prompt("abc", instruction=False)
    assert teacher == task.context + student
    assert task.context == task.instruction + "\n"
    assert task.instruction not in student and "abc" in student
    assert not teacher[-1].isspace()  # no trailing space: BPE boundaries stay stable
    completion = task.format_completion("xyz")
    assert completion == " xyz"


def test_make_examples_is_deterministic() -> None:
    a = make_examples("date", 50, seed=7)
    assert a == make_examples("date", 50, seed=7)
    assert a != make_examples("date", 50, seed=8)
    row = a[0]
    assert set(row) == {"prompt", "completion", "input", "target"}
    task = get_task("date")
    assert row["prompt"] == task.format_prompt(row["input"])
    assert row["completion"] == " " + row["target"]
    assert not row["completion"].endswith("</s>")
    students = make_examples(task, 50, seed=7, instruction=False)
    assert [r["target"] for r in students] == [r["target"] for r in a]
    assert all(task.instruction not in r["prompt"] for r in students)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_heldout_split_is_disjoint(name: str) -> None:
    task = get_task(name)
    train = make_examples(task, 400, seed=0)
    heldout = make_examples(task, 200, seed=0, split="heldout")
    assert not {r["input"] for r in train} & {r["input"] for r in heldout}
    assert all(task.is_heldout(r["input"]) for r in heldout)
    assert not any(task.is_heldout(r["input"]) for r in train)


def test_unknown_task_lists_names() -> None:
    with pytest.raises(KeyError) as info:
        get_task("nope")
    for name in TASK_NAMES:
        assert name in str(info.value)


def test_registry_is_read_only() -> None:
    with pytest.raises(TypeError):
        TASKS["new"] = TASKS["date"]  # type: ignore[index]
    with pytest.raises(AttributeError):
        TASKS["date"].name = "other"  # type: ignore[misc]
