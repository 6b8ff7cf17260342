"""From requests to batch rows.

A request with ``n`` choices becomes ``n`` rows (one sequence each) sharing its prompt; every
row carries everything the per-row sampling, grammar, stopping and adapter code needs.
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
    stream: bool = True  # its deltas go to ``on_delta``


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
                        presence_penalty=params.presence_penalty,
                        frequency_penalty=params.frequency_penalty,
                        logit_bias=params.logit_bias,
                    ),
                    grammar=item.grammar,
                    adapter=item.request.adapter,
                    stream=item.request.stream,
                )
            )
    return rows
