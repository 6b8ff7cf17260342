"""Head-of-line blocking inside a batch: one short request among long ones.

One 4-token request and fifteen 64-token requests go to the Serve app at once (one batch of
16), six times; the script prints the median latency of the short request over the long
ones'. When results leave only with the batch, the ratio is ~1; when each request's result
leaves as soon as its rows finish, it is about the share of steps the short one needs.

Run: ``python benchmarks/serve_mixed.py [--hidden 256] [--trials 6]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


async def one(client: aiohttp.ClientSession, url: str, max_tokens: int, seed: int) -> float:
    body = {
        "model": "m",
        "prompt": f"Input: March {seed % 28 + 1}\nOutput:",
        "max_tokens": max_tokens,
        "temperature": 1.0,
        "seed": seed,
    }
    started = time.perf_counter()
    async with client.post(f"{url}/v1/completions", json=body) as response:
        response.raise_for_status()
        await response.json()
    return time.perf_counter() - started


async def measure(url: str, trials: int, long_tokens: int) -> tuple[float, float]:
    shorts: list[float] = []
    longs: list[float] = []
    async with aiohttp.ClientSession() as client:
        await one(client, url, 4, 0)  # warm-up
        for trial in range(trials):
            runs = [one(client, url, long_tokens, 100 + 16 * trial + i) for i in range(15)]
            *long_s, short_s = await asyncio.gather(*runs, one(client, url, 4, trial))
            longs += long_s
            shorts.append(short_s)
    return statistics.median(shorts), statistics.median(longs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--long-tokens", type=int, default=64)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from llmvm_ray.config import load_config
    from llmvm_ray.serve.deploy import ServiceRunner
    from llmvm_ray.testing.tiny import build_tiny_model

    model_dir = Path(tempfile.mkdtemp(prefix="llmvm-mixed-")) / "model"
    build_tiny_model(model_dir, hidden_size=args.hidden, num_layers=4)
    config = load_config(
        overrides={
            "serve": {"port": 3121, "app_name": "mixed"},
            "ray": {"num_cpus": 4, "include_dashboard": False},
            "models": [{"name": "m", "model_uri": str(model_dir), "max_batch_size": 16}],
        }
    )
    with ServiceRunner(config) as runner:
        url = runner.direct_urls()[0]
        short_s, long_s = asyncio.run(measure(url, args.trials, args.long_tokens))
    print(
        f"short (4 tokens) {short_s * 1000:.0f} ms, long ({args.long_tokens} tokens) "
        f"{long_s * 1000:.0f} ms, short / long {short_s / long_s:.2f}"
    )


if __name__ == "__main__":
    main()
