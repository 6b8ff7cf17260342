"""Seed and synthesized rows: loading seeds, validating candidates, provenance columns.

A synthesized row is ``prompt`` and ``completion`` (what training uses) plus provenance:
``source`` (always ``synthesis``, which the optimizer counts), ``run_id``, ``teacher``,
``template``, ``encoding``, ``seed_ids`` (the k seed examples shown), ``unit`` (which request
of the run) and ``attempt`` (which try of that request).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from llmvm_ray.errors import InvalidRequestError

SOURCE = "synthesis"
PROVENANCE = ("source", "run_id", "task", "teacher", "template", "encoding", "seed_ids", "unit")


@dataclass(frozen=True)
class Seed:
    id: str
    prompt: str
    completion: str


def load_seeds(rows: Iterable[Mapping[str, Any]]) -> tuple[list[Seed], list[dict[str, Any]]]:
    """Usable seeds and the rejected rows (each with its ``error``).

    A seed needs non-empty string ``prompt`` and ``completion``; its id is the row's ``id``
    column when present, else its position (``row-N``). Duplicate ids are rejected, since
    provenance must name one seed unambiguously.
    """
    seeds: list[Seed] = []
    bad: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, row in enumerate(rows):
        sid = str(row.get("id")) if row.get("id") is not None else f"row-{i}"
        prompt, completion = row.get("prompt"), row.get("completion")
        error = None
        if not isinstance(prompt, str) or not prompt.strip():
            error = "seed has no non-empty string 'prompt'"
        elif not isinstance(completion, str) or not completion.strip():
            error = "seed has no non-empty string 'completion'"
        elif sid in seen:
            error = f"duplicate seed id {sid!r}"
        if error:
            bad.append({"seed_id": sid, "error": error})
            continue
        seen.add(sid)
        seeds.append(Seed(sid, prompt, completion))
    return seeds, bad


def require_seeds(seeds: list[Seed], bad: list[dict[str, Any]], where: str) -> None:
    if not seeds:
        detail = f" ({len(bad)} rejected, e.g. {bad[0]['error']})" if bad else ""
        raise InvalidRequestError(f"{where}: no usable seed examples{detail}", param="seeds")


def validate(
    record: Mapping[str, Any],
    *,
    delim: str,
    max_prompt_chars: int,
    max_completion_chars: int,
    seed_prompts: set[str],
) -> tuple[dict[str, str] | None, str | None]:
    """(clean record, None) or (None, why it is invalid).

    The delimiter is stripped from the end of a completion (LLM-VM appended it as a stop
    marker); a prompt that copies a seed's prompt is not a new example.
    """
    prompt, completion = record.get("prompt"), record.get("completion")
    if not isinstance(prompt, str) or not isinstance(completion, str):
        return None, "prompt and completion must be strings"
    if delim and completion.rstrip().endswith(delim):
        completion = completion.rstrip()[: -len(delim)]
    if not prompt.strip():
        return None, "empty prompt"
    if not completion.strip():
        return None, "empty completion"
    if len(prompt) > max_prompt_chars:
        return None, f"prompt longer than {max_prompt_chars} characters"
    if len(completion) > max_completion_chars:
        return None, f"completion longer than {max_completion_chars} characters"
    if delim and (delim in prompt or delim in completion):
        return None, f"contains the delimiter {delim!r}"
    if prompt.strip() in seed_prompts:
        return None, "copies a seed prompt"
    return {"prompt": prompt, "completion": completion}, None
