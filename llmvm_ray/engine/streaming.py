"""Streaming text deltas out of a running batch.

After every decoding step the ``RowTracker`` has decoded the rows, held back text that might
still be trimmed (a stop string in the making, an incomplete multi-byte character) and
committed the rest; ``DeltaStreamer.flush`` only hands the newly committed text to
``on_delta``. The final delta of a choice carries its ``finish_reason``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from llmvm_ray.engine.tracking import RowTracker
from llmvm_ray.engine.types import StreamDelta

logger = logging.getLogger(__name__)


class DeltaStreamer:
    """Turns tracker progress into ``StreamDelta`` callbacks (see module docstring).

    If ``on_delta`` raises (the consumer went away), that request is aborted: its rows stop
    at the next step instead of failing everyone else's batch.
    """

    def __init__(self, tracker: RowTracker, on_delta: Callable[[StreamDelta], None]) -> None:
        self._tracker = tracker
        self._on_delta = on_delta
        self._failed: set[str] = set()  # requests whose consumer raised: send them nothing more

    def flush(self) -> None:
        """Send every delta the tracker has ready."""
        for delta in self._tracker.take_deltas():
            plan = self._tracker.rows[delta.row]
            self.send(
                StreamDelta(plan.request_id, plan.choice_index, delta.text, delta.finish_reason)
            )

    def send(self, delta: StreamDelta) -> None:
        """Send one delta (unless its consumer failed before)."""
        if delta.request_id in self._failed:
            return
        try:
            self._on_delta(delta)
        except Exception:
            logger.exception("on_delta failed for %r; aborting it", delta.request_id)
            self._failed.add(delta.request_id)
            self._tracker.abort(delta.request_id)
