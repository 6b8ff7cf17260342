"""Streaming text deltas out of a running ``generate``.

HF ``generate`` calls ``streamer.put`` once with the prompt and then once per step with every
row's new token. By then the stopping criterion has already fed that step to the
``RowTracker``, which decoded the rows, held back text that might still be trimmed (a stop
string in the making, an incomplete multi-byte character) and committed the rest; the
streamer only hands the newly committed text to ``on_delta``. The final delta of a choice
carries its ``finish_reason``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from transformers.generation.streamers import BaseStreamer

from llmvm_ray.engine.tracking import RowTracker
from llmvm_ray.engine.types import StreamDelta

logger = logging.getLogger(__name__)


class DeltaStreamer(BaseStreamer):
    """Turns tracker progress into ``StreamDelta`` callbacks (see module docstring).

    If ``on_delta`` raises (the consumer went away), that request is aborted: its rows stop
    at the next step instead of failing everyone else's batch.
    """

    def __init__(self, tracker: RowTracker, on_delta: Callable[[StreamDelta], None]) -> None:
        self._tracker = tracker
        self._on_delta = on_delta
        self._failed: set[str] = set()  # requests whose consumer raised: send them nothing more

    def put(self, value: torch.Tensor) -> None:
        if value.dim() > 1:  # the prompt, sent once before decoding starts
            return
        self.flush()

    def end(self) -> None:
        self.flush()

    def flush(self) -> None:
        """Send every delta the tracker has ready."""
        for delta in self._tracker.take_deltas():
            plan = self._tracker.rows[delta.row]
            if plan.request_id in self._failed:
                continue
            try:
                self._on_delta(
                    StreamDelta(
                        request_id=plan.request_id,
                        index=plan.choice_index,
                        text=delta.text,
                        finish_reason=delta.finish_reason,
                    )
                )
            except Exception:
                logger.exception("on_delta failed for %r; aborting it", plan.request_id)
                self._failed.add(plan.request_id)
                self._tracker.abort(plan.request_id)
