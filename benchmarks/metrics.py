"""Metrics benchmark: what recording costs a request, and how late Prometheus sees it.

1. The ingress's per-request recording (one ``request`` + one ``answered`` with a time to
   first token: six Ray metric records), timed in-process over many calls.
2. Export delay: an actor increments a counter; the time until the value is on the node's
   metrics export port (what Prometheus scrapes).

Run: ``python benchmarks/metrics.py [--calls 20000]``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=20000)
    args = parser.parse_args()
    import httpx
    import ray

    from llmvm_ray.config import RayConfig
    from llmvm_ray.observability.metrics import ServeMetrics, exported_name
    from llmvm_ray.runtime import init_ray

    init_ray(RayConfig(num_cpus=1, include_dashboard=True))
    metrics = ServeMetrics("bench")
    started = time.perf_counter()
    for _ in range(args.calls):
        metrics.request("/v1/completions", "tiny", 200)
        metrics.answered("/v1/completions", "tiny", "base", 0.03, 12, 8, 0.01)
    per_call_us = (time.perf_counter() - started) / args.calls * 1e6
    print(f"recording per request: {per_call_us:.1f} us (6 records)")

    @ray.remote(num_cpus=0)
    def record() -> float:
        ServeMetrics("bench-delay").request("/v1/complete", "llmvm", 200)
        return time.time()

    recorded_at = ray.get(record.remote())
    node = next(n for n in ray.nodes() if n["Alive"])
    url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
    name = exported_name("llmvm_requests")

    def exported() -> bool:
        lines = httpx.get(url, timeout=30).text.splitlines()
        return any(x.startswith(name) and 'application="bench-delay"' in x for x in lines)

    while not exported():
        if time.time() - recorded_at > 120:
            sys.exit("not exported after 120 s")
        time.sleep(0.2)
    print(f"export delay: {time.time() - recorded_at:.1f} s")
    ray.shutdown()


if __name__ == "__main__":
    main()
