"""Per-row seeds and the RowSampler logits processor, without a model."""

from __future__ import annotations

import pytest
import torch

from llmvm_ray.engine.sampling import RowSampler, RowSampling, derive_seed, random_seed


def test_derive_seed_choice_zero_is_the_request_seed() -> None:
    assert derive_seed(1234, 0) == 1234


def test_derive_seed_is_deterministic_and_spread() -> None:
    seeds = [derive_seed(7, i) for i in range(50)]
    assert seeds == [derive_seed(7, i) for i in range(50)]
    assert len(set(seeds)) == 50
    assert derive_seed(7, 1) != derive_seed(8, 1)
    assert all(0 <= s < 2**64 for s in seeds + [derive_seed(-5, 3), derive_seed(2**70, 2)])


def test_random_seed_is_json_friendly() -> None:
    assert all(0 <= random_seed() < 2**31 for _ in range(100))


def _pick(rows: list[RowSampling], scores: torch.Tensor, steps: int = 1) -> list[list[int]]:
    sampler = RowSampler()
    for row, sampling in enumerate(rows):
        sampler.add(row, sampling)
    return [sampler.choose(scores.clone(), list(range(len(rows)))) for _ in range(steps)]


def test_greedy_row_takes_the_argmax() -> None:
    scores = torch.tensor([[0.1, 3.0, 2.0, -1.0]])
    assert _pick([RowSampling(temperature=0.0, top_p=1.0, seed=1)], scores) == [[1]]


def test_rows_draw_from_their_own_generators() -> None:
    scores = torch.zeros((1, 1000))
    row = RowSampling(temperature=1.0, top_p=1.0, seed=42)
    alone = _pick([row], scores, steps=5)
    other = RowSampling(temperature=1.0, top_p=1.0, seed=7)
    batched = _pick([other, row], torch.zeros((2, 1000)), steps=5)
    assert [step[0] for step in alone] == [step[1] for step in batched]
    assert [step[0] for step in batched] != [step[1] for step in batched]


def test_top_p_keeps_only_the_nucleus() -> None:
    # probabilities ~ [0.64, 0.24, 0.09, 0.03]: top_p 0.5 leaves only the first token
    scores = torch.log(torch.tensor([[0.64, 0.24, 0.09, 0.03]]))
    picks = _pick([RowSampling(temperature=1.0, top_p=0.5, seed=s) for s in range(1)], scores)
    assert picks == [[0]]
    many = {_pick([RowSampling(1.0, 0.5, seed)], scores)[0][0] for seed in range(30)}
    assert many == {0}
    zero = {_pick([RowSampling(1.0, 0.0, seed)], scores)[0][0] for seed in range(10)}
    assert zero == {0}


def test_masked_tokens_are_never_drawn() -> None:
    scores = torch.full((1, 100), float("-inf"))
    scores[0, [3, 97]] = 0.0
    drawn = {_pick([RowSampling(1.5, 1.0, seed)], scores)[0][0] for seed in range(40)}
    assert drawn == {3, 97}


def test_rows_are_chosen_by_id_in_any_order() -> None:
    sampler = RowSampler()
    sampler.add(7, RowSampling(1.0, 1.0, 42))
    sampler.add(3, RowSampling(0.0, 1.0, 0))
    scores = torch.zeros((2, 1000))
    scores[1, 5] = 9.0  # the greedy row's logits are the second row of ``scores``
    first = sampler.choose(scores.clone(), [7, 3])
    assert first[1] == 5
    alone = RowSampler()
    alone.add(0, RowSampling(1.0, 1.0, 42))
    assert first[0] == alone.choose(torch.zeros((1, 1000)), [0])[0]
    sampler.drop(3)
    assert sampler.choose(torch.zeros((1, 1000)), [7]) == alone.choose(torch.zeros((1, 1000)), [0])


@pytest.mark.parametrize("spread", [0.05, 0.002])  # narrow nucleus (top-k path), wide (bisection)
def test_top_p_draws_stay_in_the_sorted_nucleus(spread: float) -> None:
    vocab, top_p = 1000, 0.6
    scores = (torch.arange(vocab, dtype=torch.float) * spread)[torch.randperm(vocab)].unsqueeze(0)
    probs = torch.softmax(scores[0], dim=-1)
    sorted_probs, order = torch.sort(probs, descending=True)
    size = int((torch.cumsum(sorted_probs, dim=-1) < top_p).sum()) + 1
    nucleus = set(order[:size].tolist())
    assert (size < 256) == (spread == 0.05)
    drawn = {_pick([RowSampling(1.0, top_p, seed)], scores)[0][0] for seed in range(60)}
    assert drawn <= nucleus
    assert len(drawn) > 10
    rows = [RowSampling(1.0, top_p, 5), RowSampling(1.0, 1.0, 6), RowSampling(1.0, top_p, 7)]
    batched = _pick(rows, scores.repeat(3, 1), steps=3)
    alone = _pick([RowSampling(1.0, top_p, 7)], scores, steps=3)
    assert [step[2] for step in batched] == [step[0] for step in alone]


def test_frequency_penalty_counts_each_occurrence() -> None:
    """Token 1 leads by 1.0; a frequency penalty of 0.6 per occurrence lets it win once,
    then twice more only after token 2 (0.6 behind at first) has been penalized as much."""
    scores = torch.tensor([[0.0, 3.0, 2.0, -5.0]])
    picks = _pick([RowSampling(0.0, 1.0, 0, frequency_penalty=0.6)], scores, steps=5)
    # 1 (3.0 vs 2.0) -> 1 (2.4 vs 2.0) -> 2 (1.8 vs 2.0) -> 1 (1.8 vs 1.4) -> 2 (1.2 vs 1.4)
    assert [p[0] for p in picks] == [1, 1, 2, 1, 2]


def test_presence_penalty_applies_once_per_token() -> None:
    scores = torch.tensor([[0.0, 3.0, 2.0, -5.0]])
    picks = _pick([RowSampling(0.0, 1.0, 0, presence_penalty=1.5)], scores, steps=4)
    # 1 (3.0) -> 2 (1.5 vs 2.0) -> both seen: 1 (1.5 vs 0.5) -> 1 again: no further penalty
    assert [p[0] for p in picks] == [1, 2, 1, 1]


def test_negative_penalties_favour_repeats_and_rows_are_independent() -> None:
    scores = torch.tensor([[0.0, 3.0, 2.9, -5.0], [0.0, 3.0, 2.9, -5.0]])
    rows = [RowSampling(0.0, 1.0, 0, presence_penalty=-2.0), RowSampling(0.0, 1.0, 0)]
    sampler = RowSampler()
    for row, sampling in enumerate(rows):
        sampler.add(row, sampling)
    first = sampler.choose(scores.clone(), [0, 1])
    # Only row 0 is penalized (rewarded here); row 1 is untouched by its neighbour's counts.
    assert first == [1, 1]
    flipped = scores.clone()
    flipped[:, 2] = 3.5  # token 2 now leads by 0.5: row 0's -2.0 on token 1 keeps it on 1
    assert sampler.choose(flipped.clone(), [0, 1]) == [1, 2]
    sampler.drop(0)
    sampler.add(0, rows[0])  # a new row with the same id starts with no counts
    assert sampler.choose(flipped.clone(), [0, 1]) == [2, 2]


def test_logit_bias_forces_or_bans_tokens_before_penalties() -> None:
    scores = torch.tensor([[0.0, 3.0, 2.0, -5.0]])
    # +100 makes token 3 certain even when sampling; -100 takes the argmax out.
    forced = RowSampling(1.0, 1.0, 0, logit_bias=((3, 100.0),))
    assert {p[0] for p in _pick([forced], scores, steps=5)} == {3}
    banned = RowSampling(0.0, 1.0, 0, logit_bias=((1, -100.0),))
    assert _pick([banned], scores)[0] == [2]
    # Bias first, then penalties on the biased logits: token 2 (+1.5 -> 3.5) wins, is
    # penalized by 2.0 (-> 1.5), and token 1 (3.0) wins next.
    both = RowSampling(0.0, 1.0, 0, logit_bias=((2, 1.5),), frequency_penalty=2.0)
    assert [p[0] for p in _pick([both], scores, steps=2)] == [2, 1]
