"""Per-row progress of a running batch: decoded text, stop strings, finish reasons.

``RowTracker`` is the single source of truth about every row while ``generate`` runs. Rows
are named by the ids ``add`` hands out (they join and leave a running batch, so their
positions in it change); the decoding loop feeds it each step's tokens, asks it which rows
are finished and drains the text it has committed for streaming. The final text of a choice is the
committed text at the moment the row finished, so streamed deltas always concatenate to
exactly the returned text, whether or not anyone streamed.

Why text is held back instead of emitted as soon as it decodes:

- a stop string may still be completing (text that might be trimmed must never go out);
- a multi-byte character split across byte-level BPE tokens decodes as U+FFFD until its last
  byte arrives.

Each step diffs the text of the row's whole completion (not of single tokens, which would
break BPE merges and multi-byte characters) against the committed text. That text comes from
an ``IncrementalDecoder``, which decodes only the latest tokens for it.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from llmvm_ray.engine.detokenizing import REPLACEMENT_CHAR, IncrementalDecoder
from llmvm_ray.engine.planning import RowPlan
from llmvm_ray.engine.types import FinishReason


@dataclass
class RowState:
    """Mutable progress of one row."""

    decoder: IncrementalDecoder  # of the completion, EOS excluded
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
    """Decodes, stops and finishes the rows of a running batch (see module docstring).

    Memory stays bounded however long a batch runs: ``drop`` forgets a row once its result
    is built, and per-step work only visits rows that are live or have unsent text.
    """

    def __init__(
        self, rows: Sequence[RowPlan], tokenizer: Any, eos_token_ids: Collection[int]
    ) -> None:
        self._tokenizer = tokenizer
        self._eos = frozenset(eos_token_ids)
        self.rows: dict[int, RowPlan] = {}
        self._states: dict[int, RowState] = {}
        self._live: dict[int, None] = {}  # unfinished rows, in the order they were added
        self._unsent: dict[int, None] = {}  # rows with text or a final delta not taken yet
        self._aborted: set[str] = set()
        self._next_id = 0
        for row in rows:
            self.add(row)

    def add(self, plan: RowPlan) -> int:
        """Track a new row; return its id."""
        row = self._next_id
        self._next_id += 1
        self.rows[row] = plan
        self._states[row] = RowState(IncrementalDecoder(self._tokenizer))
        self._live[row] = None
        return row

    def drop(self, row: int) -> None:
        """Forget a finished row (after its result was built)."""
        del self.rows[row], self._states[row]
        self._live.pop(row, None)
        self._unsent.pop(row, None)

    # --- queries -------------------------------------------------------------------------
    def is_finished(self, row: int) -> bool:
        return self._states[row].finish_reason is not None

    def live_request_ids(self) -> set[str]:
        return {self.rows[row].request_id for row in self._live}

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

    def step(
        self, rows: Sequence[int], new_tokens: Sequence[int], aborted: Collection[str] = ()
    ) -> None:
        """Account for one decoding step: ``new_tokens[i]`` was appended to row ``rows[i]``."""
        self._aborted.update(aborted)
        for row, token in zip(rows, new_tokens, strict=True):
            state = self._states[row]
            if state.finish_reason is not None:
                continue  # finished rows take no more tokens
            plan = self.rows[row]
            if plan.stream:
                self._unsent[row] = None
            state.num_tokens += 1
            if token in self._eos:
                self._finish(row, "stop")
                continue
            state.pending = _pending_text(state.decoder.append(int(token)), state.committed)
            cut = _first_stop(state.pending, plan.stop)
            if cut is not None:
                state.pending = state.pending[:cut]
                self._finish(row, "stop")
            elif state.num_tokens >= plan.max_tokens:
                self._finish(row, "length")
            elif plan.request_id in self._aborted:
                self._finish(row, "stop")
            else:
                keep = len(state.pending) - _holdback(state.pending, plan.stop)
                state.committed += state.pending[:keep]
                state.pending = state.pending[keep:]

    def finish_all(self, reason: FinishReason) -> None:
        """Finish every row still open (generation ended without them finishing)."""
        for row in list(self._live):
            self._finish(row, reason)

    def take_deltas(self) -> list[RowDelta]:
        """Committed text not handed out yet, plus one final delta per finished row (of
        the rows whose request streams)."""
        deltas: list[RowDelta] = []
        for row in list(self._unsent):
            state = self._states[row]
            del self._unsent[row]
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
    def _finish(self, row: int, reason: FinishReason) -> None:
        state = self._states[row]
        self._live.pop(row, None)
        if self.rows[row].stream:
            self._unsent[row] = None
        state.committed += state.pending
        state.pending = ""
        state.finish_reason = reason


def _pending_text(full: str, committed: str) -> str:
    """The part of ``full`` (the text of the whole completion) after ``committed``."""
    if full.startswith(committed):
        return full[len(committed) :]
    # A tokenizer whose decoding of a prefix is not a prefix of the full decoding (rare;
    # not byte-level BPE). Committed text is never retracted: continue after the part both
    # agree on.
    common = 0
    for a, b in zip(full, committed, strict=False):
        if a != b:
            break
        common += 1
    return full[max(common, len(committed)) :]


def _first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Index of the earliest stop string in ``text``, or None."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


def _holdback(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters of ``text`` may still change or be trimmed.

    That is the longest suffix that is a proper prefix of some stop string, or the trailing
    U+FFFD characters of an incomplete multi-byte character, whichever is longer.
    """
    hold = len(text) - len(text.rstrip(REPLACEMENT_CHAR))
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), hold, -1):
            if text.endswith(stop[:size]):
                hold = size
                break
    return hold
