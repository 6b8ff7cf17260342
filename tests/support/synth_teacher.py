"""A tiny *synthesis* teacher: a model that answers our synthesis prompts with new examples.

Synthesis tests need a real teacher behind a real endpoint whose answers can be checked.
``make_synthesis_teacher`` trains a tiny Llama (``tiny.build_tiny_model`` at teacher size)
on exactly the prompts ``llmvm_ray.synthesis`` sends for a checkable task (every
completion-family variant, k seed examples in the run's encoding) with, as completion, n
fresh examples of the task in that encoding. Each synthesized example is then checkable
with ``check_example``: the completion must be the right answer for the prompt's input.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from llmvm_ray.dev.tasks import Task, get_task
from llmvm_ray.dev.tiny import TEACHER_HIDDEN_SIZE, build_tiny_model, cosine_schedule, fit
from llmvm_ray.synthesis import encoding as enc
from llmvm_ray.synthesis.templates import TemplateSet
from llmvm_ray.train.data import Example, collate

DELIM = "<END>"
_INPUT = re.compile(r"^Input: (?P<x>.*)\nOutput:$", re.DOTALL)


def example(task: Task, rng: random.Random) -> dict[str, str]:
    """A task row as the optimizer records it: the dynamic prompt and its completion."""
    x, y = task.sample_split(rng, "train")
    return {"prompt": task.dynamic_prompt(x), "completion": task.format_completion(y)}


def synthesis_pair(
    task: Task,
    rng: random.Random,
    *,
    k: int,
    n: int,
    encoding: enc.Encoding,
    variant: int,
) -> tuple[str, str, list[dict[str, str]]]:
    """(prompt the synthesizer sends, ideal answer, the seeds shown) for one request."""
    shots = [example(task, rng) for _ in range(k)]
    fresh = [example(task, rng) for _ in range(n)]
    rendered = TemplateSet.build("completion").render(
        variant,
        task.instruction,
        enc.format_examples(encoding, shots, DELIM),
        n,
        enc.format_instruction(encoding, DELIM),
    )
    return rendered.prompt, enc.format_examples(encoding, fresh, DELIM), shots


def check_example(task: Task, row: dict[str, Any]) -> bool:
    """Whether a synthesized row is a correct example of ``task``."""
    m = _INPUT.match(row["prompt"].strip())
    if not m:
        return False
    try:
        target = _answer(task, m["x"].strip())
    except ValueError:
        return False
    return task.score(row["completion"], target)


def _answer(task: Task, x: str) -> str:
    """The right answer for input ``x`` (recomputed, not looked up)."""
    if task.name == "reverse":
        return x[::-1]
    if task.name == "sort":
        return " ".join(sorted(x.split(), key=int))
    if task.name == "date":
        import datetime

        return datetime.datetime.strptime(x, "%B %d, %Y").date().isoformat()
    raise ValueError(task.name)


def make_synthesis_teacher(
    out_dir: str | Path,
    task: str | Task = "date",
    *,
    k: int = 2,
    n: int = 2,
    encodings: Sequence[enc.Encoding] = ("guided_json",),
    steps: int = 300,
    batch_size: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
    progress: Callable[[int, float], None] | None = None,
) -> Path:
    """Build and train the teacher in ``out_dir`` (a normal HF folder); return it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    task = get_task(task) if isinstance(task, str) else task
    out = build_tiny_model(
        out_dir, "llama", hidden_size=TEACHER_HIDDEN_SIZE, seed=seed, max_position_embeddings=1024
    )
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    variants = len(TemplateSet.build("completion").variants)
    rng = random.Random(seed)

    def next_batch() -> dict[str, Any]:
        batch = []
        for _ in range(batch_size):
            encoding = rng.choice(list(encodings))
            prompt, answer, _ = synthesis_pair(
                task, rng, k=k, n=n, encoding=encoding, variant=rng.randrange(variants)
            )
            p = tok(prompt)["input_ids"]
            c = tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            batch.append(Example(p, c, answer))
        return collate(batch, tok.pad_token_id)

    # weight_decay 0.01: torch's AdamW default, which this teacher was tuned with.
    schedule = cosine_schedule(lr, max(1, steps // 20), weight_decay=0.01)
    fit(model, next_batch, schedule, steps=steps, seed=seed, progress=progress)
    model.save_pretrained(out)
    return out
