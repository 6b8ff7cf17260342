"""Held-out evaluation at the end of a run: loss on completion tokens and exact match.

Each rank scores its shard of the held-out rows; sums are all-reduced, so the figures cover
the whole held-out set whatever the number of workers. Exact match is what the product's
quality gate cares about: greedy completions compared (stripped) with the references.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from llmvm_ray.train.data import IGNORE_INDEX, Example, collate


@torch.no_grad()
def evaluate_shard(
    module: torch.nn.Module,
    tokenizer: Any,
    shard: Sequence[Example],
    *,
    batch_size: int,
    max_new_tokens: int,
    synced: bool,
) -> torch.Tensor:
    """``[loss_sum, loss_tokens, exact_matches, examples]`` for this rank's shard.

    ``synced`` (ZeRO-3) keeps every rank generating until all are done, as each forward
    needs all ranks' parameter shards.
    """
    module.eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    sums = torch.zeros(4, dtype=torch.float64)
    device = next(module.parameters()).device
    for start in range(0, len(shard), batch_size):
        batch = list(shard[start : start + batch_size])
        tensors = {k: v.to(device) for k, v in collate(batch, pad).items()}
        logits = module(
            input_ids=tensors["input_ids"], attention_mask=tensors["attention_mask"]
        ).logits
        labels = tensors["labels"][:, 1:]
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.size(-1)).float(),
            labels.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        sums[0] += float(loss)
        sums[1] += float((labels != IGNORE_INDEX).sum())

        texts = _generate(module, tokenizer, batch, pad, max_new_tokens, synced, device)
        for example, text in zip(batch, texts, strict=True):
            if example.weight > 0:
                sums[2] += float(text.strip() == example.completion_text.strip())
                sums[3] += 1
    return sums


def _generate(
    module: torch.nn.Module,
    tokenizer: Any,
    batch: Sequence[Example],
    pad: int,
    max_new_tokens: int,
    synced: bool,
    device: torch.device,
) -> list[str]:
    """Greedy completions of the prompts, left-padded into one batch."""
    width = max(len(e.prompt_ids) for e in batch)
    ids = torch.full((len(batch), width), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, e in enumerate(batch):
        ids[row, width - len(e.prompt_ids) :] = torch.tensor(e.prompt_ids)
        mask[row, width - len(e.prompt_ids) :] = 1
    out = module.generate(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        pad_token_id=pad,
        eos_token_id=tokenizer.eos_token_id,
        synced_gpus=synced,
    )
    return tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)


def summarize(sums: torch.Tensor) -> dict[str, float]:
    """Final figures; absent (not NaN, which JSON can't carry) when there was nothing."""
    loss_sum, tokens, exact, examples = (float(x) for x in sums)
    if examples == 0:
        return {}
    metrics = {"exact_match": exact / examples, "eval_examples": examples}
    if tokens:
        metrics["eval_loss"] = loss_sum / tokens
    return metrics
