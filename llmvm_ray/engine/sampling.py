"""Per-row sampling with per-row random generators.

One RNG for a whole batch (as HF ``generate`` has) would make a row's text depend on what
else shares its batch. ``RowSampler`` instead picks each row's token itself: it applies the
row's temperature and top-p and draws from the row's own ``torch.Generator``. A row's draws
then depend only on its own seed and logits (measured: identical alone, in any batch, in any
order, joining a running batch at any step). Constraints (guided output) mask the logits
before it chooses. Logit biases and presence / frequency penalties are applied per row too,
the penalties from the tokens the row itself has generated (the sampler counts its own
choices).
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch

_MASK64 = (1 << 64) - 1
# Seeds drawn when a request gives none stay below 2**31 so every client (JavaScript
# numbers included) can send them back unchanged to reproduce a completion.
_RANDOM_SEED_BOUND = 1 << 31
# Bisection steps for the top-p threshold: the interval shrinks to 2**-30 of the top
# probability, far below any difference that changes which tokens are kept.
_BISECTION_STEPS = 30
# Most likely tokens searched for the top-p nucleus before falling back to a bisection.
_TOP_P_CANDIDATES = 256


def random_seed() -> int:
    """A fresh seed for a request that gave none (reported back in the result)."""
    return secrets.randbelow(_RANDOM_SEED_BOUND)


def derive_seed(seed: int, index: int) -> int:
    """The seed of choice ``index`` of a request seeded with ``seed``.

    Choice 0 uses the request's seed itself, so ``n=1`` and the first choice of ``n>1`` give
    the same text; other choices get a SplitMix64 mix of ``(seed, index)``: deterministic,
    well spread, and independent of anything else in the batch.
    """
    if index == 0:
        return seed & _MASK64
    z = (seed + index * 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) & _MASK64


@dataclass(frozen=True)
class RowSampling:
    """How one batch row picks its tokens."""

    temperature: float  # 0 means greedy
    top_p: float
    seed: int
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit)

    @property
    def penalized(self) -> bool:
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0

    @property
    def adjusted(self) -> bool:
        """Whether its logits change before it chooses (bias or penalties)."""
        return self.penalized or bool(self.logit_bias)


class RowSampler:
    """Chooses every row's next token (see module docstring). Rows are named by the ids the
    caller gives them in ``add``; ``choose`` gets the logits of some rows, in any order.

    The arithmetic is batched over rows (row-wise softmax, cumsum and search), which keeps a
    row's result independent of its neighbours while costing one kernel per step instead of
    one per row.
    """

    def __init__(self) -> None:
        self._rows: dict[int, RowSampling] = {}
        self._generators: dict[int, torch.Generator | None] = {}
        self._counts: dict[int, Counter[int]] = {}  # penalized row -> its tokens so far

    def add(self, row: int, sampling: RowSampling) -> None:
        self._rows[row] = sampling
        generator = None
        if sampling.temperature > 0:
            generator = torch.Generator(device="cpu")
            generator.manual_seed(sampling.seed)
        self._generators[row] = generator
        if sampling.penalized:
            self._counts[row] = Counter()

    def drop(self, row: int) -> None:
        del self._rows[row], self._generators[row]
        self._counts.pop(row, None)

    def choose(self, scores: torch.Tensor, rows: Sequence[int]) -> list[int]:
        """The next token of ``rows[i]`` from its logits ``scores[i]`` (which the biases
        and penalties of those rows change in place)."""
        adjusted = [i for i, row in enumerate(rows) if self._rows[row].adjusted]
        for i in adjusted:
            self._adjust(scores[i], rows[i])
        chosen = self._choose(scores, rows)
        for i in adjusted:
            if rows[i] in self._counts:
                self._counts[rows[i]][chosen[i]] += 1
        return chosen

    def _adjust(self, logits: torch.Tensor, row: int) -> None:
        """Add the row's logit bias, then subtract its penalties (OpenAI's order)."""
        sampling = self._rows[row]
        if sampling.logit_bias:
            tokens, bias = zip(*sampling.logit_bias, strict=True)
            index = torch.tensor(tokens, device=logits.device)
            logits[index] += torch.tensor(bias, device=logits.device).to(logits.dtype)
        counts = self._counts.get(row)
        if counts:
            tokens = torch.tensor(list(counts), device=logits.device)
            times = torch.tensor(list(counts.values()), dtype=torch.float32, device=logits.device)
            penalty = sampling.frequency_penalty * times + sampling.presence_penalty
            logits[tokens] -= penalty.to(logits.dtype)

    def _choose(self, scores: torch.Tensor, rows: Sequence[int]) -> list[int]:
        greedy = [i for i, row in enumerate(rows) if self._generators[row] is None]
        sampled = [i for i, row in enumerate(rows) if self._generators[row] is not None]
        chosen = [0] * len(rows)
        if greedy:
            index = torch.tensor(greedy, device=scores.device)
            for i, token in zip(greedy, scores[index].argmax(dim=-1).tolist(), strict=True):
                chosen[i] = token
        if sampled:
            picks = self._sample(scores, [rows[i] for i in sampled], sampled)
            for i, token in zip(sampled, picks, strict=True):
                chosen[i] = token
        return chosen

    def _sample(self, scores: torch.Tensor, rows: list[int], at: list[int]) -> list[int]:
        """Draw the next token of each of ``rows`` (whose logits are ``scores[at]``) from
        its own generator."""
        device = scores.device
        index = torch.tensor(at, device=device)
        temperature = torch.tensor([self._rows[r].temperature for r in rows], device=device)
        logits = scores[index].float()
        probs = torch.softmax(logits / temperature.unsqueeze(1), dim=-1)
        # One uniform draw per step per row, from the row's own generator on the CPU, so no
        # device kernel ever touches a row's random stream.
        u = torch.stack([torch.rand((), generator=self._generators[r]) for r in rows]).to(device)
        chosen: dict[int, int] = {}
        broken = ~torch.isfinite(probs).all(dim=-1)  # every logit masked: nothing to draw
        if bool(broken.any()):
            for i in broken.nonzero()[:, 0].tolist():
                chosen[rows[i]] = int(logits[i].argmax())
        undecided = [i for i, r in enumerate(rows) if r not in chosen]
        plain = [i for i in undecided if self._rows[rows[i]].top_p >= 1]
        nucleus = [i for i in undecided if self._rows[rows[i]].top_p < 1]
        if plain:
            at = torch.tensor(plain, device=device)
            picks = _search(probs[at], torch.cumsum(probs[at], dim=-1), u[at])
            chosen.update((rows[i], token) for i, token in zip(plain, picks, strict=True))
        if nucleus:
            chosen.update(self._sample_nucleus(probs, u, rows, nucleus))
        return [chosen[row] for row in rows]

    def _sample_nucleus(
        self, probs: torch.Tensor, u: torch.Tensor, rows: list[int], at: list[int]
    ) -> dict[int, int]:
        """Top-p draws for rows ``at`` (positions in ``rows``), without sorting the vocabulary.

        Sorting a large vocabulary's probabilities costs milliseconds per row on a CPU. A
        language model's nucleus almost always lies among its few hundred most likely tokens,
        so the nucleus is first looked for in a ``topk`` (batched, far cheaper); a row whose
        nucleus is wider gets a threshold bisection over its whole vocabulary (figures:
        benchmarks/RESULTS.md, "Figures behind design choices"). Both give the same set of
        tokens (up to ties); which one a row takes depends on that row alone.
        """
        device = probs.device
        index = torch.tensor(at, device=device)
        sub, draws = probs[index], u[index]
        top_p = torch.tensor([self._rows[rows[i]].top_p for i in at], device=device)
        values, order = torch.topk(sub, min(_TOP_P_CANDIDATES, sub.shape[-1]), dim=-1)
        fits = values.sum(dim=-1) >= top_p
        chosen: dict[int, int] = {}
        if bool(fits.any()):
            inside = fits.nonzero()[:, 0]
            values, order = values[inside], order[inside]
            # Keep the smallest prefix whose mass reaches top_p (always at least one token).
            drop = torch.cumsum(values, dim=-1) - values >= top_p[inside].unsqueeze(1)
            drop[:, 0] = False
            values = values.masked_fill(drop, 0.0)
            picks = _search(values, torch.cumsum(values, dim=-1), draws[inside])
            tokens = order.gather(1, torch.tensor(picks, device=device).unsqueeze(1))[:, 0]
            for j, token in zip(inside.tolist(), tokens.tolist(), strict=True):
                chosen[rows[at[j]]] = token
        for j in (~fits).nonzero()[:, 0].tolist():  # one row at a time: stays in cache
            row = sub[j : j + 1]
            kept = row * (row >= _nucleus_threshold(row, top_p[j : j + 1]).unsqueeze(1))
            chosen[rows[at[j]]] = _search(kept, torch.cumsum(kept, dim=-1), draws[j : j + 1])[0]
        return chosen


def _nucleus_threshold(probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Per row, (nearly) the largest t such that tokens with probability >= t hold at least
    ``top_p`` of the mass, i.e. the smallest set of most likely tokens reaching ``top_p``."""
    low = torch.zeros_like(top_p, dtype=probs.dtype)  # always keeps everything: mass 1
    high = probs.max(dim=-1).values  # keeps the top token(s)
    for _ in range(_BISECTION_STEPS):
        mid = (low + high) / 2
        mass = (probs * (probs >= mid.unsqueeze(1))).sum(dim=-1)
        enough = mass >= top_p
        low = torch.where(enough, mid, low)
        high = torch.where(enough, high, mid)
    return low


def _search(probs: torch.Tensor, cumulative: torch.Tensor, u: torch.Tensor) -> list[int]:
    """Inverse-CDF lookup per row: the first index whose cumulative mass exceeds ``u * total``.

    That index always has positive probability (masked tokens add no mass); only rounding
    with ``u`` close to 1 can run past the last possible token, which is then taken.
    """
    target = (u.to(cumulative.dtype) * cumulative[:, -1]).unsqueeze(1)
    positions = torch.searchsorted(cumulative, target, right=True)[:, 0]
    clamped = positions.clamp(max=cumulative.shape[-1] - 1)
    valid = (positions == clamped) & (probs.gather(1, clamped.unsqueeze(1))[:, 0] > 0)
    picks = clamped.tolist()
    if not bool(valid.all()):
        for row in (~valid).nonzero()[:, 0].tolist():
            picks[row] = int(torch.nonzero(probs[row] > 0)[-1, 0])
    return picks
