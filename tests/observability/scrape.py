"""Reading the real Prometheus text that Ray's metrics agents export.

Every alive node serves its processes' metrics on its metrics export port (what Prometheus
scrapes); these helpers fetch all of them and sum samples over Ray's per-process labels
(``WorkerId``), as a dashboard's ``sum by`` would.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families


def export_urls() -> list[str]:
    import ray

    return [
        f"http://{n['NodeManagerAddress']}:{n['MetricsExportPort']}/metrics"
        for n in ray.nodes()
        if n["Alive"]
    ]


class Scrape:
    """One scrape of every node: ``value(name, **labels)`` sums the matching samples."""

    def __init__(self, texts: list[str]) -> None:
        self.samples = [
            sample
            for text in texts
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        ]

    @classmethod
    def now(cls) -> Scrape:
        return cls([httpx.get(url, timeout=30).text for url in export_urls()])

    def names(self) -> set[str]:
        return {s.name for s in self.samples}

    def value(self, name: str, **labels: str) -> float:
        return sum(
            s.value
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )


def wait_for_metrics(
    check: Callable[[Scrape], Any], timeout_s: float = 90, what: str = "metrics"
) -> Scrape:
    """Scrape until ``check`` passes (Ray exports every few seconds). ``check`` asserts; its
    last failure is re-raised at the deadline, so the report shows what was missing."""
    deadline = time.monotonic() + timeout_s
    while True:
        scrape = Scrape.now()
        try:
            check(scrape)
            return scrape
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        time.sleep(1.0)
