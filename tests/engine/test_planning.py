"""Rows from requests."""

from __future__ import annotations

from llmvm_ray.engine.planning import PreparedRequest, build_rows
from llmvm_ray.engine.sampling import derive_seed
from tests.engine.helpers import req


def prepared(request, prompt_len: int = 5, seed: int = 0) -> PreparedRequest:
    return PreparedRequest(request, tuple(range(prompt_len)), seed, None)


def test_rows_expand_n_with_derived_seeds() -> None:
    rows = build_rows([prepared(req("a", n=3), seed=9), prepared(req("b"), seed=4)])
    assert [(r.request_id, r.choice_index) for r in rows] == [
        ("a", 0),
        ("a", 1),
        ("a", 2),
        ("b", 0),
    ]
    assert [r.sampling.seed for r in rows] == [9, derive_seed(9, 1), derive_seed(9, 2), 4]
