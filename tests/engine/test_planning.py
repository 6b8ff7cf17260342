"""Rows from requests, and splitting requests into batches that fit."""

from __future__ import annotations

from llmvm_ray.engine import AdapterRef
from llmvm_ray.engine.planning import PreparedRequest, build_rows, split_batches
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


def test_one_batch_when_everything_fits() -> None:
    items = [prepared(req(str(i), adapter=AdapterRef(f"x{i % 2}", "p"))) for i in range(6)]
    assert split_batches(items, max_adapters=2, max_model_len=100) == [[0, 1, 2, 3, 4, 5]]


def test_split_on_adapter_capacity_and_versions() -> None:
    items = [
        prepared(req("0", adapter=AdapterRef("a", "p1"))),
        prepared(req("1", adapter=AdapterRef("b", "p1"))),
        prepared(req("2")),
        prepared(req("3", adapter=AdapterRef("c", "p1"))),
        prepared(req("4", adapter=AdapterRef("c", "p2"))),
    ]
    assert split_batches(items, max_adapters=2, max_model_len=100) == [[0, 1, 2], [3], [4]]


def test_split_when_padding_would_run_past_the_context() -> None:
    items = [
        prepared(req("long-prompt", max_tokens=4), prompt_len=90),
        prepared(req("long-output", max_tokens=90), prompt_len=5),
        prepared(req("small", max_tokens=4), prompt_len=5),
    ]
    assert split_batches(items, max_adapters=1, max_model_len=100) == [[0], [1, 2]]
