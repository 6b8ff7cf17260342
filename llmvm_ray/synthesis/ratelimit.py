"""An asyncio limit on teacher requests: at most N in flight and at most R starts per second.

Starts are spaced evenly (1/R apart) rather than allowed in bursts: providers count requests
per short window, and a burst of a whole pool's worth at once is what earns 429s. A pool of
W workers gives each ``max_in_flight / W`` and ``requests_per_s / W`` (see ``workers``), so
the limit holds for the run as a whole without a shared coordinator on the request path.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class RateLimiter:
    def __init__(self, max_in_flight: int, requests_per_s: float | None = None) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        self.max_in_flight = max_in_flight
        self.interval = 1.0 / requests_per_s if requests_per_s else 0.0
        self._slots = asyncio.Semaphore(max_in_flight)
        self._lock = asyncio.Lock()
        self._next_start = 0.0
        self.in_flight = 0
        self.peak_in_flight = 0

    async def _pace(self) -> None:
        if not self.interval:
            return
        async with self._lock:
            now = time.monotonic()
            wait = self._next_start - now
            self._next_start = max(now, self._next_start) + self.interval
        if wait > 0:
            await asyncio.sleep(wait)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        async with self._slots:
            await self._pace()
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            try:
                yield
            finally:
                self.in_flight -= 1
