"""Head-of-line blocking: a short request among long ones, arriving with them or late.

1. **Together:** one 4-token request and fifteen 64-token requests go to the Serve app at
   once (one batch of 16), six times; the script prints the median latency of the short
   request over the long ones'. When results leave only with the batch, the ratio is ~1;
   when each request's result leaves as soon as its rows finish, it is about the share of
   steps the short one needs.
2. **Late:** the fifteen long requests start, and the short one arrives 150 ms later, while
   they decode; its latency with continuous batching (it joins the running batch) over
   without (it waits for the batch to end), same app, same trials.

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


async def one(
    client: aiohttp.ClientSession, url: str, max_tokens: int, seed: int, model: str = "m"
) -> float:
    body = {
        "model": model,
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


async def measure_late(url: str, trials: int, long_tokens: int, model: str) -> float:
    """Median latency of a 4-token request sent 150 ms after fifteen long ones."""
    shorts: list[float] = []
    async with aiohttp.ClientSession() as client:
        await one(client, url, 4, 0, model)  # warm-up
        for trial in range(trials):
            runs = [
                asyncio.create_task(one(client, url, long_tokens, 300 + 16 * trial + i, model))
                for i in range(15)
            ]
            await asyncio.sleep(0.15)  # past the batch wait: the long batch is decoding
            shorts.append(await one(client, url, 4, trial, model))
            await asyncio.gather(*runs)
    return statistics.median(shorts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--long-tokens", type=int, default=64)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from llmvm_ray.config import load_config
    from llmvm_ray.dev.tiny import build_tiny_model
    from llmvm_ray.serve.deploy import ServiceRunner

    model_dir = Path(tempfile.mkdtemp(prefix="llmvm-mixed-")) / "model"
    build_tiny_model(model_dir, hidden_size=args.hidden, num_layers=4)
    config = load_config(
        overrides={
            "serve": {"port": 3121, "app_name": "mixed"},
            "ray": {"num_cpus": 4, "include_dashboard": False},
            "models": [
                {"name": "m", "model_uri": str(model_dir), "max_batch_size": 16},
                {
                    "name": "m-static",
                    "model_uri": str(model_dir),
                    "max_batch_size": 16,
                    "continuous_batching": False,
                },
            ],
        }
    )
    with ServiceRunner(config) as runner:
        url = runner.direct_urls()[0]
        short_s, long_s = asyncio.run(measure(url, args.trials, args.long_tokens))
        print(
            f"together: short (4 tokens) {short_s * 1000:.0f} ms, long ({args.long_tokens} "
            f"tokens) {long_s * 1000:.0f} ms, short / long {short_s / long_s:.2f}",
            flush=True,
        )
        late = {
            model: asyncio.run(measure_late(url, args.trials, args.long_tokens, model))
            for model in ("m", "m-static")
        }
    print(
        f"late: short request arriving 150 ms into a batch: continuous {late['m'] * 1000:.0f} "
        f"ms, static {late['m-static'] * 1000:.0f} ms, continuous / static "
        f"{late['m'] / late['m-static']:.2f}"
    )


if __name__ == "__main__":
    main()
