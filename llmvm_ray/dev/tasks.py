"""Synthetic tasks whose answers can be checked exactly.

They exist so that tests and demos can measure whether a model (a tiny teacher, a distilled
student) really learned something, without any downloaded data or weights.

Prompt convention (LLM-VM's split of a request into a stable context and a dynamic prompt):

- ``task.context`` is the stable part: the instruction followed by a newline.
- ``task.dynamic_prompt(x)`` is the per-request part: ``"Input: {x}\\nOutput:"``.
- ``task.format_prompt(x)`` (teacher) is ``context + dynamic_prompt(x)``;
  ``task.format_prompt(x, instruction=False)`` (student) is ``dynamic_prompt(x)`` alone: a
  distilled student has to imply the context it was never shown.
- A completion is ``" " + target``: it starts with ONE space and ends without EOS (whoever
  tokenizes for training or generation adds EOS). The prompt therefore never ends in
  whitespace, which keeps byte-level BPE boundaries identical at training and serving time.
  ``score`` strips, so a model's raw completion text can be scored directly.

Held-out split: an input belongs to the held-out set when a CRC32 of ``(task name, input)``
falls in one eighth of the range. Training data never contains held-out inputs and evaluation
uses only held-out inputs, so train/test are disjoint whatever seeds callers choose.
"""

from __future__ import annotations

import calendar
import random
import string
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

Split = Literal["train", "heldout", "any"]

_HELDOUT_BUCKETS = 8
# Rejection sampling gives up after this many tries per example; every task's input space is
# large and one eighth of it is held out, so this only ever trips on a broken sampler.
_MAX_TRIES_PER_EXAMPLE = 1000


@dataclass(frozen=True)
class Task:
    """A checkable task: a stable instruction plus a sampler of (input, target) pairs.

    ``teacher_steps`` is the number of training steps after which ``tiny.train_on_task`` with
    the teacher defaults reliably passes 95 % held-out exact match (measured on 2 CPU cores).
    """

    name: str
    instruction: str
    sampler: Callable[[random.Random], tuple[str, str]]
    teacher_steps: int = 300

    @property
    def context(self) -> str:
        """The stable part of a teacher prompt (instruction and newline)."""
        return self.instruction + "\n"

    def sample(self, rng: random.Random) -> tuple[str, str]:
        """Draw one ``(input, target)`` pair from any split (deterministic given ``rng``)."""
        return self.sampler(rng)

    def sample_split(self, rng: random.Random, split: Split = "train") -> tuple[str, str]:
        """Draw one pair whose input lies in ``split`` (see the module docstring)."""
        for _ in range(_MAX_TRIES_PER_EXAMPLE):
            item = self.sampler(rng)
            if split == "any" or self.is_heldout(item[0]) == (split == "heldout"):
                return item
        raise RuntimeError(f"task {self.name!r}: could not sample a {split!r} example")

    def is_heldout(self, input: str) -> bool:
        """Whether ``input`` is reserved for evaluation (stable across processes and runs)."""
        return zlib.crc32(f"{self.name}\0{input}".encode()) % _HELDOUT_BUCKETS == 0

    def dynamic_prompt(self, input: str) -> str:
        """The per-request part of the prompt, the only part a student sees."""
        return f"Input: {input}\nOutput:"

    def format_prompt(self, input: str, instruction: bool = True) -> str:
        """The full prompt: with the instruction for a teacher, without it for a student."""
        dynamic = self.dynamic_prompt(input)
        return self.context + dynamic if instruction else dynamic

    @staticmethod
    def format_completion(target: str) -> str:
        """The completion text for ``target``: one leading space, no EOS."""
        return " " + target

    @staticmethod
    def score(prediction: str, target: str) -> bool:
        """Exact match after stripping surrounding whitespace."""
        return prediction.strip() == target.strip()


def _sample_date(rng: random.Random) -> tuple[str, str]:
    year = rng.randint(1950, 2049)
    month = rng.randint(1, 12)
    day = rng.randint(1, calendar.monthrange(year, month)[1])
    return f"{calendar.month_name[month]} {day}, {year}", f"{year:04d}-{month:02d}-{day:02d}"


def _sample_reverse(rng: random.Random) -> tuple[str, str]:
    word = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 6)))
    return word, word[::-1]


def _sample_sort(rng: random.Random) -> tuple[str, str]:
    digits = [rng.randint(0, 9) for _ in range(rng.randint(3, 5))]
    return " ".join(map(str, digits)), " ".join(map(str, sorted(digits)))


TASKS: Mapping[str, Task] = MappingProxyType(
    {
        task.name: task
        for task in (
            Task(
                name="date",
                instruction="Convert the date to ISO format (YYYY-MM-DD).",
                sampler=_sample_date,
                teacher_steps=200,
            ),
            Task(
                name="reverse",
                instruction="Reverse the letters of the word.",
                sampler=_sample_reverse,
                teacher_steps=250,
            ),
            Task(
                name="sort",
                instruction="Sort the digits in ascending order.",
                sampler=_sample_sort,
                teacher_steps=400,
            ),
        )
    }
)
"""Every task by name. Read-only: tasks are defined here, not registered at run time."""

TASK_NAMES: tuple[str, ...] = tuple(TASKS)


def get_task(name: str) -> Task:
    """Look a task up by name; the error lists the valid names (it reaches CLI users)."""
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; available tasks: {', '.join(TASK_NAMES)}") from None


def make_examples(
    task: Task | str,
    n: int,
    seed: int,
    instruction: bool = True,
    split: Split = "train",
) -> list[dict[str, str]]:
    """A deterministic list of ``{"prompt", "completion", "input", "target"}`` dicts.

    ``prompt`` follows ``Task.format_prompt`` and ``completion`` is ``" " + target`` without
    EOS (see the module docstring). ``input``/``target`` are included so callers can score
    or re-prompt without parsing. The same arguments always give the same list.
    """
    if isinstance(task, str):
        task = get_task(task)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(seed)
    examples = []
    for _ in range(n):
        input, target = task.sample_split(rng, split)
        examples.append(
            {
                "prompt": task.format_prompt(input, instruction=instruction),
                "completion": task.format_completion(target),
                "input": input,
                "target": target,
            }
        )
    return examples
