"""From requests to batch rows, and from rows to the padded batches that can run together.

A request with ``n`` choices becomes ``n`` rows (one sequence each) sharing its prompt; every
row carries everything the per-row processors need. Rows normally all run in ONE padded
``generate``; they are split into consecutive sub-batches only when a single batch cannot
hold them (more distinct adapters than a replica keeps loaded, or a padded batch that would
run a row past the model's positions).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from llmvm_ray.engine.sampling import RowSampling, derive_seed
from llmvm_ray.engine.types import AdapterRef, GenerationRequest


@dataclass(frozen=True)
class RowPlan:
    """One sequence of the batch: choice ``choice_index`` of request ``request_index``."""

    request_index: int
    request_id: str
    choice_index: int
    prompt_ids: tuple[int, ...]
    max_tokens: int
    stop: tuple[str, ...]
    sampling: RowSampling
    grammar: str | None  # compiled llguidance grammar, None when unconstrained
    adapter: AdapterRef | None  # None for the base model


@dataclass(frozen=True)
class PreparedRequest:
    """A validated request with what ``generate`` derived for it."""

    request: GenerationRequest
    prompt_ids: tuple[int, ...]
    seed: int  # the request's seed, or the one drawn for it
    grammar: str | None


def build_rows(prepared: Sequence[PreparedRequest]) -> list[RowPlan]:
    """Expand every request into its ``n`` rows, in request order then choice order."""
    rows: list[RowPlan] = []
    for request_index, item in enumerate(prepared):
        params = item.request.params
        for choice in range(params.n):
            rows.append(
                RowPlan(
                    request_index=request_index,
                    request_id=item.request.request_id,
                    choice_index=choice,
                    prompt_ids=item.prompt_ids,
                    max_tokens=params.max_tokens,
                    stop=params.stop,
                    sampling=RowSampling(
                        temperature=params.temperature,
                        top_p=params.top_p,
                        seed=derive_seed(item.seed, choice),
                    ),
                    grammar=item.grammar,
                    adapter=item.request.adapter,
                )
            )
    return rows


def split_batches(
    prepared: Sequence[PreparedRequest], *, max_adapters: int, max_model_len: int
) -> list[list[int]]:
    """Group request indices (in order) into batches that can each run as one ``generate``.

    A batch holds at most ``max_adapters`` distinct adapters (they must all be loaded at
    once), never two paths under one adapter name, and keeps ``longest prompt + largest
    max_tokens <= max_model_len``: in a padded batch every row keeps decoding until the
    longest-running row is done, so a long-prompt row would otherwise be pushed past the
    positions the model has (a crash for models with learned position embeddings). The
    requests of one batch stay in the caller's order.
    """
    batches: list[list[int]] = []
    current: list[int] = []
    adapters: dict[str, str] = {}
    longest_prompt = most_tokens = 0
    for index, item in enumerate(prepared):
        ref: AdapterRef | None = item.request.adapter
        if current and not _fits(
            adapters, longest_prompt, most_tokens, item, max_adapters, max_model_len
        ):
            batches.append(current)
            current, adapters, longest_prompt, most_tokens = [], {}, 0, 0
        current.append(index)
        if ref is not None:
            adapters[ref.name] = ref.path
        longest_prompt = max(longest_prompt, len(item.prompt_ids))
        most_tokens = max(most_tokens, item.request.params.max_tokens)
    if current:
        batches.append(current)
    return batches


def _fits(
    adapters: dict[str, str],
    longest_prompt: int,
    most_tokens: int,
    item: PreparedRequest,
    max_adapters: int,
    max_model_len: int,
) -> bool:
    """Whether ``item`` can join a batch with these adapters and lengths."""
    ref = item.request.adapter
    if ref is not None:
        if adapters.get(ref.name, ref.path) != ref.path:
            return False  # two versions of one adapter name cannot be loaded together
        if ref.name not in adapters and len(adapters) + 1 > max_adapters:
            return False
    prompt = max(longest_prompt, len(item.prompt_ids))
    return prompt + max(most_tokens, item.request.params.max_tokens) <= max_model_len
