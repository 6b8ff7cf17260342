"""Offline decision steps: a tiny model trained on the steps, served behind ``AgentModel``.

A 2–3 layer model with a character-level vocabulary cannot follow few-shot prompts, but it
learns fixed-format mappings in minutes on CPU (shared/ENVIRONMENT.md). Trained on the
dynamic prompts of every decision step (``steps.py``) of the training people only, it plays
the role a distilled student plays in production: it sees the dynamic prompt and implies the
step's context. It is trained through the fine-tune pipeline (``finetune.py``);
``LocalStepModel`` batches concurrent agent calls into one ``generate``.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmvm_ray.agents.bench.knowledge import KnowledgeBase, split_questions
from llmvm_ray.agents.bench.steps import flat_examples, make_sampler
from llmvm_ray.agents.model import ModelReply, StepCall
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


class LocalStepModel:
    """An ``AgentModel`` over a local step model; concurrent calls share one batch."""

    def __init__(self, model_dir: str | Path, max_batch: int = 32) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.tokenizer.padding_side = "left"
        self.max_batch = max_batch
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None

    async def complete(self, call: StepCall) -> ModelReply:
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._worker = asyncio.get_running_loop().create_task(self._run())
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((call, future, time.perf_counter()))
        return await future

    async def _run(self) -> None:
        assert self._queue is not None
        while True:
            batch = [await self._queue.get()]
            await asyncio.sleep(0.005)  # let concurrent runs add their calls
            while not self._queue.empty() and len(batch) < self.max_batch:
                batch.append(self._queue.get_nowait())
            # One generate per temperature: a greedy call must never be sampled.
            groups: dict[float, list[Any]] = {}
            for item in batch:
                groups.setdefault(item[0].temperature, []).append(item)
            for group in groups.values():
                await self._answer(group)

    async def _answer(self, batch: list[Any]) -> None:
        try:
            texts = await asyncio.to_thread(self._generate, [c for c, _, _ in batch])
        except Exception as exc:  # hand the failure to every waiting call
            for _, future, _ in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future, started), text in zip(batch, texts, strict=True):
            if not future.done():
                future.set_result(
                    ModelReply(
                        text=text,
                        served_by="local",
                        model="agent-steps",
                        latency_s=time.perf_counter() - started,
                    )
                )

    def _generate(self, calls: list[StepCall]) -> list[str]:
        import torch

        tok = self.tokenizer
        enc = tok([c.prompt for c in calls], return_tensors="pt", padding=True)
        temperature = calls[0].temperature
        sample = temperature > 0
        with torch.inference_mode():
            out = self.model.generate(
                **enc,
                max_new_tokens=max(c.max_tokens for c in calls),
                do_sample=sample,
                temperature=temperature if sample else None,
                top_p=None,
                top_k=None,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
            )
        texts = tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        return [t.split("\n")[0] for t in texts]

    async def aclose(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            self._worker = None
            self._queue = None


def seeded(seed: int) -> random.Random:
    return random.Random(seed)
