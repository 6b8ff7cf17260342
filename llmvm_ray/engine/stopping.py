"""Per-row stopping for a padded ``generate``.

HF's built-in criteria stop a row on EOS or when the WHOLE batch reaches ``max_new_tokens``;
here every row has its own ``max_tokens``, stop strings, guided grammar and client. This
criterion feeds each step's tokens to the ``RowTracker`` (which decides per row) and returns
the per-row "done" tensor, so HF pads finished rows and ends the loop once every row is done.
It also polls ``should_abort`` once per live request per step, so a disconnected client's rows
stop at the next token instead of holding the batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from transformers import StoppingCriteria

from llmvm_ray.engine.tracking import RowTracker

logger = logging.getLogger(__name__)


class RowStoppingCriteria(StoppingCriteria):
    """Marks rows done as the tracker finishes them (see module docstring)."""

    def __init__(
        self,
        tracker: RowTracker,
        should_abort: Callable[[str], bool] | None = None,
        after_step: Callable[[], None] | None = None,
    ) -> None:
        self._tracker = tracker
        self._should_abort = should_abort
        self._after_step = after_step

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor | None, **kwargs: object
    ) -> torch.BoolTensor:
        self._tracker.step(input_ids[:, -1].tolist(), self._aborted_requests())
        if self._after_step is not None:
            self._after_step()
        done = self._tracker.finished_mask()
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    def _aborted_requests(self) -> set[str]:
        if self._should_abort is None:
            return set()
        aborted = set()
        for request_id in self._tracker.live_request_ids():
            try:
                if self._should_abort(request_id):
                    aborted.add(request_id)
            except Exception:  # a broken callback must not take the whole batch down
                logger.exception("should_abort(%r) raised; not aborting", request_id)
        return aborted
