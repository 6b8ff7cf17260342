"""Per-tenant request rates at the edge: a token bucket per tenant, in each ingress replica.

Why per replica and not cluster-wide: a shared counter would put an actor call on every
request's path; with ``serve.ingress_replicas`` replicas a tenant gets up to that many times
``quotas.requests_per_s`` in all, which the operator sizes for. Tenants are API keys, so the
buckets are as many as the configured keys (one without keys).
"""

from __future__ import annotations

import time

from llmvm_ray.config import QuotaConfig
from llmvm_ray.errors import RateLimitError


class TenantRates:
    def __init__(self, quotas: QuotaConfig) -> None:
        self._rate = quotas.requests_per_s
        self._burst = (quotas.requests_per_s or 0.0) * quotas.burst_s
        self._buckets: dict[str, tuple[float, float]] = {}  # tenant -> (tokens, at)

    def take(self, tenant: str) -> None:
        """One request of ``tenant``, or ``RateLimitError`` saying when one would fit."""
        if self._rate is None:
            return
        now = time.monotonic()
        tokens, at = self._buckets.get(tenant, (max(self._burst, 1.0), now))
        tokens = min(max(self._burst, 1.0), tokens + (now - at) * self._rate)
        if tokens < 1.0:
            self._buckets[tenant] = (tokens, now)
            raise RateLimitError(
                f"more than {self._rate:g} requests per second (quotas.requests_per_s)",
                retry_after_s=(1.0 - tokens) / self._rate,
            )
        self._buckets[tenant] = (tokens - 1.0, now)
