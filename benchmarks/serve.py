"""Serving benchmark: Serve HTTP vs the engine in-process, and batched vs unbatched serving.

Everything runs side by side in one process on one machine, so the ratios are meaningful even
on a shared, noisy box (absolute numbers are not). For each concurrency level the same work
(the same prompts, seeds and lengths) goes through:

- ``engine``: the engine behind the same micro-batcher, called in-process (no Ray, no HTTP);
- ``direct``: the Ray Serve app over HTTP straight to the ingress replica's own HTTP server
  (Serve's throughput-optimized mode, on by default: ``ray.serve_throughput_optimized``);
- ``proxy``: the same app over HTTP through the Serve proxy (the configured ``serve.port``);
- ``static`` (or ``continuous`` with ``--batching static``): the same app (direct) with the
  other batching mode: ``continuous_batching = false``, where requests that arrive while a
  batch decodes wait for the next batch instead of joining it, or true;
- ``unbatched``: the same app (direct) with ``max_batch_size = 1``.

The load generator is ``aiohttp`` (as vLLM's ``benchmark_serving``): on a 2-core machine the
client shares the cores with the server, and httpx costs ~1.3 ms of CPU per request to
aiohttp's ~0.25 ms (measured), which would be charged to the server.

Each level alternates engine, direct, proxy and static runs ``--rounds`` times (this machine's speed
drifts by tens of percent over minutes) and reports medians of the per-round ratios. Each run
sends ``--per-client`` requests per concurrent client (32: 512 requests at
concurrency 16, ~32 batches), so every run lasts seconds rather than a few batches.

On a CUDA machine the engine and both Serve models run on the GPU (each replica reserves
``--num-gpus``, default 0.4, so both fit on one card).

Run: ``python benchmarks/serve.py [--per-client 32] [--max-tokens 32] [--hidden 256]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class Run:
    """One timed run: how many requests, how long, how many completion tokens."""

    requests: int
    seconds: float
    tokens: int
    rows_per_step: float = 0.0  # the engine's mean occupancy over the run
    rows_per_prefill: float = 0.0  # rows per prefill forward (joins)

    @property
    def req_s(self) -> float:
        return self.requests / self.seconds

    @property
    def tok_s(self) -> float:
        return self.tokens / self.seconds


def _occupancy(before: dict[str, int], after: dict[str, int]) -> tuple[float, float]:
    """Rows per decoding step and per prefill between two readings of the engine's
    ``DecodeStats``."""
    delta = {k: after[k] - before[k] for k in after}
    per_step = delta["row_steps"] / delta["steps"] if delta["steps"] else 0.0
    per_prefill = delta["prefill_rows"] / delta["prefills"] if delta["prefills"] else 0.0
    return per_step, per_prefill


def work(n: int, max_tokens: int, mixed: bool = False) -> list[dict]:
    """``n`` requests of ``max_tokens`` tokens each; ``mixed``: lengths spread evenly over
    1/4 to 7/4 of ``max_tokens`` (same mean), in an order that mixes them in every batch."""
    return [
        {
            "prompt": f"Input: March {i % 28 + 1}, 20{i % 30:02d}\nOutput:",
            "max_tokens": round(max_tokens * (0.25 + 1.5 * (i * 7 % 16) / 15))
            if mixed
            else max_tokens,
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


async def run_http(
    urls: list[str], model: str, items: list[dict], concurrency: int
) -> tuple[float, int]:
    """``items`` over HTTP, ``concurrency`` at a time; request ``i`` goes to
    ``urls[i % len(urls)]`` (one address per ingress replica on the direct path)."""
    sem = asyncio.Semaphore(concurrency)
    tokens = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as client:

        async def one(i: int, item: dict) -> None:
            nonlocal tokens
            async with sem:
                body = {"model": model, **item}
                url = urls[i % len(urls)]
                async with client.post(f"{url}/v1/completions", json=body) as r:
                    r.raise_for_status()
                    tokens += (await r.json())["usage"]["completion_tokens"]

        started = time.perf_counter()
        await asyncio.gather(*(one(i, item) for i, item in enumerate(items)))
    return time.perf_counter() - started, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--per-client", type=int, default=32, help="requests per client")
    parser.add_argument(
        "--unbatched-per-client",
        type=int,
        default=None,
        help="requests per client for the slow unbatched runs (default: --per-client)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="alternations per level")
    parser.add_argument(
        "--ingress-replicas",
        type=int,
        default=1,
        help="ingress replicas (direct clients spread over their addresses)",
    )
    parser.add_argument(
        "--warmup-rounds",
        type=int,
        default=None,
        help="untimed rounds per level first (default: 1 with CUDA, where each process's "
        "first batches of a new shape ran up to 3x slower on an H200; else 0)",
    )
    parser.add_argument(
        "--engine-process",
        choices=["auto", "on", "off"],
        default="auto",
        help="the Serve replicas' engine_process setting (auto: on with CUDA)",
    )
    parser.add_argument(
        "--batching",
        choices=["continuous", "static"],
        default="continuous",
        help="batching of the engine, direct and proxy runs (the side path gets the other)",
    )
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument(
        "--mixed",
        action="store_true",
        help="completion lengths spread from 1/4 to 7/4 of --max-tokens instead of all equal",
    )
    parser.add_argument("--hidden", type=int, default=256, help="hidden size of the model")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument(
        "--batch-wait", type=float, default=None, help="batch_wait_timeout_s (default: config's)"
    )
    parser.add_argument(
        "--join-ratio", type=float, default=None, help="join_ratio (default: config's)"
    )
    parser.add_argument(
        "--join-wait-steps", type=int, default=None, help="join_wait_steps (default: config's)"
    )
    parser.add_argument(
        "--num-gpus",
        type=float,
        default=None,
        help="GPUs per Serve replica (default: 0.4 when CUDA is available, else 0)",
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    from llmvm_ray.config import ModelConfig, load_config
    from llmvm_ray.dev.tiny import build_tiny_model
    from llmvm_ray.engine import Engine
    from llmvm_ray.engine.batching import Batcher
    from llmvm_ray.serve.deploy import ServiceRunner

    if args.batch_wait is None:
        args.batch_wait = ModelConfig.model_fields["batch_wait_timeout_s"].default
    policy = {
        key: value
        for key, value in (
            ("join_ratio", args.join_ratio),
            ("join_wait_steps", args.join_wait_steps),
        )
        if value is not None
    }
    if args.num_gpus is None:
        args.num_gpus = 0.4 if torch.cuda.is_available() else 0.0
    if args.warmup_rounds is None:
        args.warmup_rounds = 1 if torch.cuda.is_available() else 0

    continuous = args.batching == "continuous"
    other = "static" if continuous else "continuous"
    levels = [int(c) for c in args.concurrency.split(",")]
    items = {c: work(args.per_client * c, args.max_tokens, args.mixed) for c in levels}
    unbatched_items = {
        c: work((args.unbatched_per_client or args.per_client) * c, args.max_tokens, args.mixed)
        for c in levels
    }
    warmup = work(4, args.max_tokens)
    # One untimed request per client before each timed run: the timed part is the steady
    # state. (From cold, the burst's first request finds the batcher with no recent
    # concurrency, runs alone, and costs Serve a whole batch of time that the in-process
    # run, whose clients all enqueue in one loop tick, never pays.)
    ramp = {c: work(c, args.max_tokens) for c in levels}
    model_dir = Path(tempfile.mkdtemp(prefix="llmvm-bench-")) / "model"
    build_tiny_model(model_dir, hidden_size=args.hidden, num_layers=args.layers)
    print(
        f"model: llama {args.layers} layers x {args.hidden}; {args.per_client} requests per "
        f"client x {args.max_tokens} tokens{' (mixed lengths)' if args.mixed else ''}; "
        f"{args.rounds} rounds per level; "
        f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}; "
        f"engine_process {args.engine_process}; {args.batching} batching",
        flush=True,
    )

    # The in-process engine behind the same batcher (the replica's hot path without Serve),
    # with the thread count of a 1-CPU replica. It runs in this process while the Serve app
    # is deployed but idle, alternating with the HTTP runs: this machine's speed drifts by
    # tens of percent over minutes, so only runs taken side by side compare.
    torch.set_num_threads(1)
    engine = Engine(ModelConfig(name="bench", model_uri=str(model_dir), **policy))
    batcher: Batcher | None = None

    async def timed_engine(c: int) -> Run:
        nonlocal batcher
        if batcher is None:  # bound to the running loop
            batcher = Batcher(
                engine.generate, max_batch_size=16, wait_s=args.batch_wait, continuous=continuous
            )
            await run_engine(batcher, warmup, 1)
        await run_engine(batcher, ramp[c], c)
        before = engine.stats()
        seconds, tokens = await run_engine(batcher, items[c], c)
        return Run(len(items[c]), seconds, tokens, *_occupancy(before, engine.stats()))

    config = load_config(
        overrides={
            "serve": {
                "port": 3117,
                "app_name": "bench",
                "ingress_replicas": args.ingress_replicas,
            },
            # No dashboard: nothing here reads it, and it costs the shared cores.
            "ray": {"num_cpus": 4, "include_dashboard": False},
            "models": [
                {
                    "name": "batched",
                    "model_uri": str(model_dir),
                    "max_batch_size": 16,
                    "batch_wait_timeout_s": args.batch_wait,
                    "num_gpus": args.num_gpus,
                    "engine_process": args.engine_process,
                    "continuous_batching": continuous,
                    **policy,
                },
                {
                    "name": other,
                    "model_uri": str(model_dir),
                    "max_batch_size": 16,
                    "batch_wait_timeout_s": args.batch_wait,
                    "continuous_batching": not continuous,
                    "num_gpus": args.num_gpus,
                    "engine_process": args.engine_process,
                    **policy,
                },
                {
                    "name": "unbatched",
                    "model_uri": str(model_dir),
                    "max_batch_size": 1,
                    "num_gpus": args.num_gpus,
                    "engine_process": args.engine_process,
                },
            ],
        }
    )
    # runs[(path, c)]: one Run per round
    runs: dict[tuple[str, int], list[Run]] = {}
    with ServiceRunner(config) as runner:
        from ray import serve  # after the runner has set Ray's environment

        from llmvm_ray.runtime import deployment_name

        direct = runner.direct_urls()
        if not direct:
            raise SystemExit("no direct ingress URL: is ray.serve_throughput_optimized off?")
        paths = {"direct": direct, "proxy": [runner.url]}
        print(f"direct ingress: {', '.join(direct)}; proxy: {runner.url}")

        replicas = {
            model.name: serve.get_deployment_handle(deployment_name(model), "bench")
            for model in config.models
        }

        async def decoding(model: str) -> dict[str, int]:
            return (await replicas[model].info.remote())["decoding"]

        async def timed_http(urls: list[str], model: str, c: int, todo: list[dict]) -> Run:
            await run_http(urls, model, ramp[c], c)
            before = await decoding(model)
            seconds, tokens = await run_http(urls, model, todo, c)
            return Run(len(todo), seconds, tokens, *_occupancy(before, await decoding(model)))

        def record(name: str, c: int, run: Run) -> None:
            runs.setdefault((name, c), []).append(run)
            print(
                f"  c={c:<3} {name:<9} {run.req_s:7.1f} req/s {run.tok_s:8.0f} tok/s "
                f"{run.rows_per_step:5.1f} rows/step {run.rows_per_prefill:5.1f} rows/prefill",
                flush=True,
            )

        async def measure() -> None:
            for url in paths.values():
                for model in ("batched", other, "unbatched"):
                    await run_http(url, model, warmup, 1)  # warm-up, alone
            for c in levels:
                for _ in range(args.warmup_rounds):  # untimed: new batch shapes, see --help
                    await timed_engine(c)
                    for url in paths.values():
                        await timed_http(url, "batched", c, items[c])
                for _ in range(args.rounds):
                    record("engine", c, await timed_engine(c))
                    for name, url in paths.items():
                        record(name, c, await timed_http(url, "batched", c, items[c]))
                    record(other, c, await timed_http(direct, other, c, items[c]))
                # Unbatched is engine-bound and slow: one run is enough for its ratio.
                run = await timed_http(paths["direct"], "unbatched", c, unbatched_items[c])
                record("unbatched", c, run)

        asyncio.run(measure())

    def rate(path: str, c: int) -> float:
        return statistics.median(run.req_s for run in runs[(path, c)])

    def tok_rate(path: str, c: int) -> float:
        return statistics.median(run.tok_s for run in runs[(path, c)])

    def round_ratios(path: str, c: int, over: str = "engine") -> list[float]:
        """This path's req/s over ``over`` 's in the same round, per round."""
        pairs = zip(runs[(path, c)], runs[(over, c)], strict=True)
        return [path_run.req_s / engine_run.req_s for path_run, engine_run in pairs]

    def continuous_over_static(c: int) -> float:
        ratios = round_ratios("direct", c, other)
        return statistics.median(ratios if continuous else [1 / r for r in ratios])

    print()
    header = (
        f"{'concurrency':>11} | {'engine req/s':>12} | {'direct req/s':>12} | "
        f"{'proxy req/s':>11} | {'unbatched req/s':>15} | {'direct tok/s':>12} | "
        f"{'direct/engine':>13} | {'proxy/engine':>12} | {'batched/unbatched':>17} | "
        f"{'continuous/static':>17}"
    )
    print(header)
    print("-" * len(header))
    for c in levels:
        print(
            f"{c:>11} | {rate('engine', c):>12.1f} | {rate('direct', c):>12.1f} | "
            f"{rate('proxy', c):>11.1f} | {rate('unbatched', c):>15.1f} | "
            f"{tok_rate('direct', c):>12.0f} | "
            f"{statistics.median(round_ratios('direct', c)):>13.2f} | "
            f"{statistics.median(round_ratios('proxy', c)):>12.2f} | "
            f"{rate('direct', c) / rate('unbatched', c):>17.2f} | "
            f"{continuous_over_static(c):>17.2f}"
        )
        spread = []
        for name in ("direct", "proxy"):
            per_round = round_ratios(name, c)
            spread.append(f"{name} {min(per_round):.2f}-{max(per_round):.2f}")
        print(f"{'':>11}   per-round ratios: {', '.join(spread)}")
    print("\nreq/s, tok/s: median over rounds; direct/engine, proxy/engine: median over rounds")
    print("of the Serve HTTP run (straight to the ingress replica / through the Serve proxy)")
    print("over the in-process engine run just before it, same work")
    print("batched/unbatched: direct requests/s with max_batch_size=16 over max_batch_size=1")
    print("continuous/static: direct requests/s with continuous batching over without (batches")
    print("run one after another), median over rounds")


if __name__ == "__main__":
    main()
