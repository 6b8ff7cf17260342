"""Serving benchmark: Serve HTTP vs the engine in-process, and batched vs unbatched serving.

Everything runs side by side in one process on one machine, so the ratios are meaningful even
on a shared, noisy box (absolute numbers are not). For each concurrency level the same work
(the same prompts, seeds and lengths) goes through:

- ``engine``: the engine behind the same micro-batcher, called in-process (no Ray, no HTTP);
- ``serve``: the Ray Serve app over HTTP (proxy → FastAPI ingress → model replica);
- ``serve-unbatched``: the same app with ``max_batch_size = 1``.

Run: ``python benchmarks/serve.py [--requests 64] [--max-tokens 32] [--hidden 256]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def work(n: int, max_tokens: int) -> list[dict]:
    return [
        {
            "prompt": f"Input: March {i % 28 + 1}, 20{i % 30:02d}\nOutput:",
            "max_tokens": max_tokens,
            "temperature": 1.0,
            "seed": i,
        }
        for i in range(n)
    ]


async def run_engine(batcher, items: list[dict], concurrency: int) -> tuple[float, int]:
    from llmvm_ray.engine.types import GenerationRequest, SamplingParams

    sem = asyncio.Semaphore(concurrency)
    tokens = 0

    async def one(i: int, item: dict) -> None:
        nonlocal tokens
        async with sem:
            params = SamplingParams(
                max_tokens=item["max_tokens"], temperature=item["temperature"], seed=item["seed"]
            )
            result = await batcher.generate(GenerationRequest(f"r{i}", item["prompt"], params))
            tokens += result.completion_tokens

    started = time.perf_counter()
    await asyncio.gather(*(one(i, item) for i, item in enumerate(items)))
    return time.perf_counter() - started, tokens


async def run_http(url: str, model: str, items: list[dict], concurrency: int) -> tuple[float, int]:
    sem = asyncio.Semaphore(concurrency)
    tokens = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:

        async def one(item: dict) -> None:
            nonlocal tokens
            async with sem:
                r = await client.post(f"{url}/v1/completions", json={"model": model, **item})
                r.raise_for_status()
                tokens += r.json()["usage"]["completion_tokens"]

        started = time.perf_counter()
        await asyncio.gather(*(one(item) for item in items))
    return time.perf_counter() - started, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=256, help="hidden size of the model")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument(
        "--batch-wait", type=float, default=None, help="batch_wait_timeout_s (default: config's)"
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from llmvm_ray.config import ModelConfig, load_config
    from llmvm_ray.engine import Engine
    from llmvm_ray.serve.batching import Batcher
    from llmvm_ray.serve.deploy import ServiceRunner
    from llmvm_ray.testing.tiny import build_tiny_model

    if args.batch_wait is None:
        args.batch_wait = ModelConfig.model_fields["batch_wait_timeout_s"].default

    levels = [int(c) for c in args.concurrency.split(",")]
    items = work(args.requests, args.max_tokens)
    model_dir = Path(tempfile.mkdtemp(prefix="llmvm-bench-")) / "model"
    build_tiny_model(model_dir, hidden_size=args.hidden, num_layers=args.layers)
    print(
        f"model: llama {args.layers} layers x {args.hidden}; {args.requests} requests x "
        f"{args.max_tokens} tokens per level"
    )

    results: dict[tuple[str, int], tuple[float, int]] = {}

    # In-process engine behind the same batcher (the Serve replica's hot path without Serve),
    # with the thread count a 1-CPU replica uses.
    import torch

    torch.set_num_threads(1)
    engine = Engine(ModelConfig(name="bench", model_uri=str(model_dir)))

    async def engine_levels() -> None:
        batcher = Batcher(engine.generate, max_batch_size=16, wait_s=args.batch_wait)
        await run_engine(batcher, items[:4], 4)  # warm-up
        for c in levels:
            results[("engine", c)] = await run_engine(batcher, items, c)

    asyncio.run(engine_levels())

    config = load_config(
        overrides={
            "serve": {"port": 3117, "app_name": "bench"},
            "ray": {"num_cpus": 4},
            "models": [
                {
                    "name": "batched",
                    "model_uri": str(model_dir),
                    "max_batch_size": 16,
                    "batch_wait_timeout_s": args.batch_wait,
                },
                {"name": "unbatched", "model_uri": str(model_dir), "max_batch_size": 1},
            ],
        }
    )
    with ServiceRunner(config) as runner:

        async def http_levels() -> None:
            for model in ("batched", "unbatched"):
                await run_http(runner.url, model, items[:4], 4)  # warm-up
            for c in levels:
                results[("serve", c)] = await run_http(runner.url, "batched", items, c)
                results[("serve-unbatched", c)] = await run_http(runner.url, "unbatched", items, c)

        asyncio.run(http_levels())

    print()
    header = (
        f"{'concurrency':>11} | {'engine req/s':>12} | {'serve req/s':>11} | "
        f"{'unbatched req/s':>15} | {'serve tok/s':>11} | {'serve/engine':>12} | "
        f"{'batched/unbatched':>17}"
    )
    print(header)
    print("-" * len(header))
    for c in levels:
        e_s, e_tok = results[("engine", c)]
        s_s, s_tok = results[("serve", c)]
        u_s, _ = results[("serve-unbatched", c)]
        n = len(items)
        print(
            f"{c:>11} | {n / e_s:>12.1f} | {n / s_s:>11.1f} | {n / u_s:>15.1f} | "
            f"{s_tok / s_s:>11.0f} | {e_s / s_s:>12.2f} | {u_s / s_s:>17.2f}"
        )
    print("\nserve/engine: requests/s through Serve HTTP over the in-process engine (same work)")
    print("batched/unbatched: Serve requests/s with max_batch_size=16 over max_batch_size=1")


if __name__ == "__main__":
    main()
