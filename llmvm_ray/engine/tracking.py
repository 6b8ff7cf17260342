"""Per-row progress of one padded batch: decoded text, stop strings, finish reasons.

``RowTracker`` is the single source of truth about every row while ``generate`` runs. The
stopping criterion feeds it each step's tokens; the logits processors ask it which rows are
finished; the streamer drains the text it has committed. The final text of a choice is the
committed text at the moment the row finished, so streamed deltas always concatenate to
exactly the returned text, whether or not anyone streamed.

Why text is held back instead of emitted as soon as it decodes:

- a stop string may still be completing (text that might be trimmed must never go out);
- a multi-byte character split across byte-level BPE tokens decodes as U+FFFD until its last
  byte arrives.

Each step decodes the row's whole completion (not single tokens) and diffs it against the
committed text, which is what keeps BPE merges and multi-byte characters right.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from llmvm_ray.engine.planning import RowPlan
from llmvm_ray.engine.types import FinishReason

_REPLACEMENT_CHAR = "\ufffd"


@dataclass
class RowState:
    """Mutable progress of one row."""

    token_ids: list[int] = field(default_factory=list)  # completion ids, EOS excluded
    num_tokens: int = 0  # tokens generated so far, counting an EOS that ended the row
    committed: str = ""  # text that can no longer change
    pending: str = ""  # decoded text after ``committed`` that is held back
    finish_reason: FinishReason | None = None
    streamed: int = 0  # characters of ``committed`` already handed out as deltas
    final_sent: bool = False


@dataclass(frozen=True)
class RowDelta:
    """New committed text of one row (and its finish reason once it is done)."""

    row: int
    text: str
    finish_reason: FinishReason | None


class RowTracker:
    """Decodes, stops and finishes the rows of one batch (see module docstring)."""

    def __init__(self, rows: Sequence[RowPlan], tokenizer: Any, eos_token_ids: Collection[int]):
        self.rows = list(rows)
        self._tokenizer = tokenizer
        self._eos = frozenset(eos_token_ids)
        self._states = [RowState() for _ in self.rows]
        self._aborted: set[str] = set()

    # --- queries -------------------------------------------------------------------------
    def is_finished(self, row: int) -> bool:
        return self._states[row].finish_reason is not None

    def finished_mask(self) -> list[bool]:
        return [s.finish_reason is not None for s in self._states]

    def live_request_ids(self) -> set[str]:
        return {
            p.request_id
            for p, s in zip(self.rows, self._states, strict=True)
            if s.finish_reason is None
        }

    def text(self, row: int) -> str:
        return self._states[row].committed

    def finish_reason(self, row: int) -> FinishReason:
        return self._states[row].finish_reason or "length"

    def completion_tokens(self, row: int) -> int:
        return self._states[row].num_tokens

    # --- updates -------------------------------------------------------------------------
    def abort(self, request_id: str) -> None:
        """Finish every row of ``request_id`` at its next step (finish reason ``stop``)."""
        self._aborted.add(request_id)

    def step(self, new_tokens: Sequence[int], aborted: Collection[str] = ()) -> None:
        """Account for one decoding step: ``new_tokens[row]`` was appended to every row."""
        self._aborted.update(aborted)
        for row, token in enumerate(new_tokens):
            state = self._states[row]
            if state.finish_reason is not None:
                continue  # a finished row keeps decoding in the padded batch; ignore it
            plan = self.rows[row]
            state.num_tokens += 1
            if token in self._eos:
                self._finish(state, "stop")
                continue
            state.token_ids.append(int(token))
            state.pending = self._pending_text(state)
            cut = _first_stop(state.pending, plan.stop)
            if cut is not None:
                state.pending = state.pending[:cut]
                self._finish(state, "stop")
            elif state.num_tokens >= plan.max_tokens:
                self._finish(state, "length")
            elif plan.request_id in self._aborted:
                self._finish(state, "stop")
            else:
                keep = len(state.pending) - _holdback(state.pending, plan.stop)
                state.committed += state.pending[:keep]
                state.pending = state.pending[keep:]

    def finish_all(self, reason: FinishReason) -> None:
        """Finish every row still open (generation ended without them finishing)."""
        for state in self._states:
            if state.finish_reason is None:
                self._finish(state, reason)

    def take_deltas(self) -> list[RowDelta]:
        """Committed text not handed out yet, plus one final delta per finished row."""
        deltas: list[RowDelta] = []
        for row, state in enumerate(self._states):
            if state.final_sent:
                continue
            text = state.committed[state.streamed :]
            done = state.finish_reason is not None
            if text or done:
                state.streamed = len(state.committed)
                state.final_sent = done
                deltas.append(RowDelta(row, text, state.finish_reason))
        return deltas

    # --- internals -----------------------------------------------------------------------
    def _finish(self, state: RowState, reason: FinishReason) -> None:
        state.committed += state.pending
        state.pending = ""
        state.finish_reason = reason

    def _pending_text(self, state: RowState) -> str:
        full = self._tokenizer.decode(
            state.token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        if full.startswith(state.committed):
            return full[len(state.committed) :]
        # A tokenizer whose decoding of a prefix is not a prefix of the full decoding (rare;
        # not byte-level BPE). Committed text is never retracted: continue after the part
        # both agree on.
        common = 0
        for a, b in zip(full, state.committed, strict=False):
            if a != b:
                break
            common += 1
        return full[max(common, len(state.committed)) :]


def _first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Index of the earliest stop string in ``text``, or None."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


def _holdback(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters of ``text`` may still change or be trimmed.

    That is the longest suffix that is a proper prefix of some stop string, or the trailing
    U+FFFD characters of an incomplete multi-byte character, whichever is longer.
    """
    hold = len(text) - len(text.rstrip(_REPLACEMENT_CHAR))
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), hold, -1):
            if text.endswith(stop[:size]):
                hold = size
                break
    return hold
