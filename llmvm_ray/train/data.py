"""From prompt/completion rows to the token batches the loss is computed on.

The prompt is tokenized exactly as the serving engine tokenizes a request
(``engine.prompting.encode_prompt``) and the completion separately, followed by EOS: the
model is trained on the very token boundary it will see at serving time, and learns to stop.
Labels mask every prompt token, so the loss is on completion tokens (and EOS) only.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llmvm_ray.engine.prompting import encode_prompt

IGNORE_INDEX = -100  # label value PyTorch's cross-entropy skips


@dataclass(frozen=True)
class Example:
    prompt_ids: list[int]
    completion_ids: list[int]  # ends with EOS unless truncated
    completion_text: str  # the reference, for exact match
    weight: float = 1.0  # 0 for padding rows that keep ranks in step

    def __len__(self) -> int:
        return len(self.prompt_ids) + len(self.completion_ids)


def split_rows(
    rows: Sequence[dict[str, Any]], eval_fraction: float, eval_max: int, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, eval) rows, drawn by a seeded shuffle; both non-empty when possible."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = min(math.floor(len(rows) * eval_fraction + 0.5), eval_max, len(rows) - 1)
    if eval_fraction > 0 and eval_max > 0 and len(rows) >= 2:
        n_eval = max(n_eval, 1)
    n_eval = max(n_eval, 0)
    eval_rows = [rows[i] for i in order[:n_eval]]
    train_rows = [rows[i] for i in order[n_eval:]]
    return train_rows, eval_rows


def encode(tokenizer: Any, row: dict[str, Any], max_seq_len: int) -> Example:
    """Token ids of one row; over-long rows lose prompt tokens from the left first."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the base model's tokenizer has no EOS token; completions can't end")
    prompt = encode_prompt(tokenizer, row["prompt"])
    completion = list(tokenizer(row["completion"], add_special_tokens=False)["input_ids"])
    completion.append(eos)
    completion = completion[: max_seq_len - 1]  # keep at least one prompt token
    prompt = prompt[-(max_seq_len - len(completion)) :]
    return Example(prompt, completion, row["completion"])


def collate(batch: Sequence[Example], pad_id: int) -> dict[str, Any]:
    """Right-padded ``input_ids``/``attention_mask`` and ``labels`` on completion tokens."""
    import torch

    width = max(len(e) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    for row, e in enumerate(batch):
        seq = e.prompt_ids + e.completion_ids
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
        if e.weight > 0:
            labels[row, len(e.prompt_ids) : len(seq)] = torch.tensor(e.completion_ids)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def shard(examples: Sequence[Example], rank: int, world: int) -> list[Example]:
    """This rank's share, padded with weight-0 copies so every rank has the same count.

    Equal counts matter: every forward under ZeRO-3 (and every collective) needs all ranks.
    """
    mine = list(examples[rank::world])
    per_rank = math.ceil(len(examples) / world) if examples else 0
    while len(mine) < per_rank:
        filler = examples[0]
        mine.append(Example(filler.prompt_ids, filler.completion_ids, filler.completion_text, 0.0))
    return mine


def steps_per_epoch(n_train: int, world: int, batch_size: int) -> int:
    """Optimizer steps per pass: DistributedSampler pads to ceil(n / world) rows per rank."""
    return max(1, math.ceil(math.ceil(n_train / world) / batch_size))
