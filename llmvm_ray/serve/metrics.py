"""Prometheus metrics of the HTTP service, exposed at ``/metrics``.

Each ingress replica owns its registry (no process-global state), so tests and several apps
in one process never collide. Labels stay low-cardinality: endpoint, model, served_by, status.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from llmvm_ray.protocol import LLMVMMetadata

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class ServeMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "llmvm_requests",
            "HTTP API requests by endpoint and status code.",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "llmvm_request_latency_seconds",
            "End-to-end latency of answered requests.",
            ["endpoint", "model", "served_by"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ttft = Histogram(
            "llmvm_time_to_first_token_seconds",
            "Time to the first streamed token.",
            ["endpoint", "model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.tokens = Counter(
            "llmvm_tokens",
            "Tokens processed, by kind (prompt or completion).",
            ["model", "kind"],
            registry=self.registry,
        )

    def observe(
        self,
        endpoint: str,
        model: str,
        meta: LLMVMMetadata,
        first_token_at: float | None = None,
        started: float | None = None,
    ) -> None:
        """Record one answered request."""
        self.latency.labels(endpoint, model, meta.served_by).observe(meta.latency_ms / 1000.0)
        self.tokens.labels(model, "prompt").inc(meta.prompt_tokens)
        self.tokens.labels(model, "completion").inc(meta.completion_tokens)
        if first_token_at is not None and started is not None:
            self.ttft.labels(endpoint, model).observe(first_token_at - started)

    def count(self, endpoint: str, status: int) -> None:
        self.requests.labels(endpoint, str(status)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
