"""Offline decision steps: a tiny model trained on the steps, served behind ``AgentModel``.

A 2–3 layer model with a character-level vocabulary cannot follow few-shot prompts, but it
learns fixed-format mappings in minutes on CPU (shared/ENVIRONMENT.md). Trained on the
dynamic prompts of every decision step (``steps.py``) of the training people only, it plays
the role a distilled student plays in production: it sees the dynamic prompt and implies the
step's context. It is trained through the fine-tune pipeline (``finetune.py``) and served by
``agents.model.LocalStepModel``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from llmvm_ray.agents.bench.knowledge import KnowledgeBase, split_questions
from llmvm_ray.agents.bench.steps import flat_examples, make_sampler
from llmvm_ray.dev.tasks import Task


@dataclass(frozen=True)
class StepTask(Task):
    """A task whose input *is* the dynamic prompt (the step prompts carry their labels)."""

    def dynamic_prompt(self, input: str) -> str:
        return input


def step_task(kb: KnowledgeBase, flat_dir: Path | None = None) -> StepTask:
    train = list(split_questions(kb.questions, heldout=False))
    extra = flat_examples(flat_dir) if flat_dir else flat_examples()
    return StepTask(name="agent-steps", instruction="", sampler=make_sampler(train, extra))


def seeded(seed: int) -> random.Random:
    return random.Random(seed)
