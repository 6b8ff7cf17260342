"""Detokenizing: decoding each row's whole completion every step vs ``IncrementalDecoder``.

Both methods side by side in one run, on the tiny byte-level BPE model (built locally):

1. ``RowTracker`` alone: a 16-row batch fed ``--max-tokens`` tokens of text per row (words,
   digits, CJK, emoji); tracker time per row-step and per request (one row's whole run).
2. ``Engine.generate``: a 16-row batch sampling ``--max-tokens`` tokens per row (EOS barred
   by a logit bias, so every row runs to the end); completion tokens per second.

The old method is this script's own ``FullDecoder`` (what ``RowTracker`` did before it got
an ``IncrementalDecoder``), swapped in for the baseline runs. Torch runs on one thread, as
in the engine tests.

Run: ``python benchmarks/detokenize.py [--max-tokens 32 512] [--repeats 5]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llmvm_ray.engine import tracking  # noqa: E402

ROWS = 16
TEXT = "Input: March 3\nOutput: 2024-03-03, the quick brown fox 中文 😀 naïve café. "


class FullDecoder:
    """The old method: decode the row's whole completion at every step."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer, self._ids = tokenizer, []

    def append(self, token: int) -> str:
        self._ids.append(token)
        return self._tokenizer.decode(
            self._ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )


@contextmanager
def method(name: str) -> Iterator[None]:
    """Run ``RowTracker`` with the ``old`` or the ``new`` decoder."""
    kept = tracking.IncrementalDecoder
    if name == "old":
        tracking.IncrementalDecoder = FullDecoder  # type: ignore[misc, assignment]
    try:
        yield
    finally:
        tracking.IncrementalDecoder = kept  # type: ignore[misc]


def compare(repeats: int, run: Callable[[], Any]) -> dict[str, float]:
    """Median seconds of ``run`` by method, the methods alternating (the cores are shared,
    so a busy spell hits both), after one warm-up run of each."""
    times: dict[str, list[float]] = {"old": [], "new": []}
    for i in range(repeats + 1):
        for name, kept in times.items():
            with method(name):
                started = time.perf_counter()
                run()
                if i:
                    kept.append(time.perf_counter() - started)
    return {name: statistics.median(kept) for name, kept in times.items()}


def tracker_seconds(tokenizer: Any, max_tokens: int, repeats: int) -> dict[str, float]:
    from llmvm_ray.engine.planning import RowPlan
    from llmvm_ray.engine.sampling import RowSampling

    ids = tokenizer.encode(TEXT * (max_tokens // 8 + 2), add_special_tokens=False)
    rows = [ids[3 * r : 3 * r + max_tokens] for r in range(ROWS)]
    plan = RowPlan(0, "r", 0, (1,), max_tokens, ("<stop>",), RowSampling(1.0, 1.0, 0), None, None)

    def run() -> None:
        tracker = tracking.RowTracker([plan] * ROWS, tokenizer, [tokenizer.eos_token_id])
        for step in range(max_tokens):
            tracker.step(range(ROWS), [row[step] for row in rows])
            tracker.take_deltas()

    return compare(repeats, run)


def engine_seconds(engine: Any, eos: int, max_tokens: int, repeats: int) -> dict[str, float]:
    from llmvm_ray.engine import GenerationRequest, SamplingParams

    params = [SamplingParams(max_tokens, seed=i, logit_bias=((eos, -100.0),)) for i in range(ROWS)]
    prompts = [f"Input: March {i + 1}\nOutput:" for i in range(ROWS)]
    requests = [GenerationRequest(f"r{i}", prompts[i], params[i]) for i in range(ROWS)]

    def run() -> None:
        results = engine.generate(requests)
        assert all(r.choices[0].completion_tokens == max_tokens for r in results)

    return compare(repeats, run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-tokens", type=int, nargs="+", default=[32, 512])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import torch
    from transformers import AutoTokenizer

    from llmvm_ray.config import ModelConfig
    from llmvm_ray.dev.tiny import build_tiny_model
    from llmvm_ray.engine import Engine

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        positions = max(args.max_tokens) + 64
        path = build_tiny_model(tmp, "llama", max_position_embeddings=positions, seed=0)
        tokenizer = AutoTokenizer.from_pretrained(path)
        engine = Engine(ModelConfig(name="tiny", model_uri=str(path), device="cpu"))
        print(f"{ROWS} rows; old = whole completion decoded every step, new = incremental")
        header = "| max_tokens | tracker us/row-step old / new | ms/request old / new | "
        print(header + "engine tok/s old / new | speed-up tracker / engine |")
        print("|---|---|---|---|---|")
        for n in args.max_tokens:
            tr = tracker_seconds(tokenizer, n, args.repeats)
            en = engine_seconds(engine, tokenizer.eos_token_id, n, args.repeats)
            per_step = {k: v / (ROWS * n) * 1e6 for k, v in tr.items()}
            per_request = {k: v / ROWS * 1e3 for k, v in tr.items()}
            tok_s = {k: ROWS * n / v for k, v in en.items()}
            print(
                f"| {n} | {per_step['old']:.1f} / {per_step['new']:.1f} "
                f"| {per_request['old']:.2f} / {per_request['new']:.2f} "
                f"| {tok_s['old']:.0f} / {tok_s['new']:.0f} "
                f"| {tr['old'] / tr['new']:.1f}x / {en['old'] / en['new']:.2f}x |"
            )


if __name__ == "__main__":
    main()
