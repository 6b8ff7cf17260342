"""``BatchRun``: one ``Engine.generate`` call, from its first prefill to its last result.

The decoding loop of the engine. Each iteration:

1. runs the engine's pending adapter operations (a long run must not lock them out);
2. takes newly arrived requests from the inbox (continuous batching), validates them, and
   admits the waiting ones that fit: up to ``max_rows`` rows, at most as many distinct
   adapters as the replica keeps loaded, never two versions of one adapter name. Admitted
   requests are prefilled on their own and joined to the running rows (``KVBatch``);
3. decodes one token for every running row: guided masks, then ``RowSampler`` picks, then
   ``RowTracker`` applies stops, EOS, ``max_tokens`` and client aborts;
4. streams the committed text, hands over each request whose rows are all finished (its
   result leaves now, not when the batch's longest row does) and removes finished rows.

It returns once no row runs and nothing waits, and the inbox (if any) is closed.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from llmvm_ray.engine.adapters import AdapterManager
from llmvm_ray.engine.decoding import KVBatch
from llmvm_ray.engine.guided import Guidance, GuidedRows
from llmvm_ray.engine.inbox import RequestInbox
from llmvm_ray.engine.loader import LoadedModel
from llmvm_ray.engine.planning import PreparedRequest, RowPlan, build_rows
from llmvm_ray.engine.sampling import RowSampler
from llmvm_ray.engine.streaming import DeltaStreamer
from llmvm_ray.engine.tracking import RowTracker
from llmvm_ray.engine.types import Choice, GenerationRequest, GenerationResult, StreamDelta

logger = logging.getLogger(__name__)

# How long an idle run waits on its inbox before servicing adapter operations again.
_IDLE_POLL_S = 0.05

# ``service(live_adapters) -> deferred``: run the engine's pending adapter operations that do
# not touch an adapter the running rows use (name -> path); True if some had to wait.
Service = Callable[[Mapping[str, str]], bool]


@dataclass
class DecodeStats:
    """Cumulative counters of an engine's decoding loop (operators read occupancy from them:
    ``row_steps / steps`` rows per decoding step, ``prefill_rows / prefills`` per join)."""

    steps: int = 0  # decoding forwards
    row_steps: int = 0  # rows decoded, summed over steps
    prefills: int = 0  # prefill forwards (a batch's first rows, then each group of joiners)
    prefill_rows: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


@dataclass
class _Active:
    """A request whose rows are in the batch."""

    item: PreparedRequest
    rows: list[int]  # tracker ids, in choice order


class BatchRun:
    """The decoding loop of one ``generate`` call (see module docstring)."""

    def __init__(
        self,
        loaded: LoadedModel,
        adapters: AdapterManager,
        guidance: Guidance,
        *,
        service: Service,
        on_delta: Callable[[StreamDelta], None] | None,
        should_abort: Callable[[str], bool] | None,
        on_result: Callable[[GenerationResult], None] | None,
        join_ratio: float = 0.0,
        join_wait_steps: int = 0,
        stats: DecodeStats | None = None,
    ) -> None:
        self._loaded = loaded
        self._adapters = adapters
        self._guidance = guidance
        self._service = service
        self._should_abort = should_abort
        self._on_result = on_result
        self._tracker = RowTracker([], loaded.tokenizer, loaded.eos_token_ids)
        self._sampler = RowSampler()
        self._guided: GuidedRows | None = None
        self._streamer = DeltaStreamer(self._tracker, on_delta) if on_delta else None
        self._kv = KVBatch(loaded.device, loaded.pad_token_id)
        self._live: list[int] = []  # running rows' tracker ids, in batch order
        self._next: dict[int, int] = {}  # running row -> the token it feeds next step
        self._active: dict[str, _Active] = {}
        self._keep: set[str] = set()  # request ids whose results ``execute`` returns
        self._results: dict[str, GenerationResult] = {}
        self._arrived: dict[str, int] = {}  # waiting request -> the step it arrived at
        self._join_ratio = join_ratio
        self._join_wait = join_wait_steps
        self.stats = stats if stats is not None else DecodeStats()
        self.steps = 0  # this run's decoding steps

    def execute(
        self,
        prepared: Sequence[PreparedRequest],
        inbox: RequestInbox | None,
        prepare: Callable[[GenerationRequest], PreparedRequest],
    ) -> dict[str, GenerationResult]:
        """Run until done; return the results of ``prepared`` by request id (every result,
        joiners' too, also goes to ``on_result`` as it finishes)."""
        waiting: deque[PreparedRequest] = deque(prepared)
        self._keep = {item.request.request_id for item in prepared}
        self._arrived = dict.fromkeys(self._keep, 0)
        max_rows = inbox.max_rows if inbox is not None else None
        with torch.inference_mode():
            while True:
                with torch.inference_mode(False):  # adapter weights must stay trainable
                    deferred = self._service(self._live_adapters())
                if inbox is not None:
                    waiting.extend(self._accept(inbox, prepare))
                self._admit(waiting, max_rows, adapters_blocked=deferred)
                if self._live:
                    self._step()
                elif waiting:
                    continue  # admitted ones finished at once (aborted before they started)
                elif inbox is None or inbox.closed:
                    break
                else:
                    inbox.wait(_IDLE_POLL_S)
        return self._results

    # --- admission -----------------------------------------------------------------------
    def _accept(
        self, inbox: RequestInbox, prepare: Callable[[GenerationRequest], PreparedRequest]
    ) -> list[PreparedRequest]:
        accepted = []
        for request in inbox.take():
            if request.request_id in self._arrived or request.request_id in self._active:
                error = ValueError(f"request_id {request.request_id!r} is already in this batch")
                inbox.reject(request.request_id, error)
                continue
            try:
                accepted.append(prepare(request))
                self._arrived[request.request_id] = self.steps
            except Exception as exc:  # noqa: BLE001 - that request fails, the batch goes on
                inbox.reject(request.request_id, exc)
        return accepted

    def _admit(
        self, waiting: deque[PreparedRequest], max_rows: int | None, adapters_blocked: bool
    ) -> None:
        """Prefill and join the waiting requests that fit, oldest first."""
        if not waiting or self._live and not self._kv.can_join:
            return
        if self._live and not self._join_now(waiting):
            return
        batch: list[PreparedRequest] = []
        rows = len(self._live)
        adapters = dict(self._live_adapters())
        while waiting:
            item = waiting[0]
            if self._aborted(item.request.request_id):
                waiting.popleft()
                self._arrived.pop(item.request.request_id, None)
                self._deliver(item, [])
                continue
            n = item.request.params.n
            if rows and max_rows is not None and rows + n > max_rows:
                break
            ref = item.request.adapter
            if ref is not None:
                if adapters_blocked and rows:
                    break  # an adapter operation waits for the adapter rows to drain
                if adapters.get(ref.name, ref.path) != ref.path:
                    break  # two versions of one adapter name cannot be loaded together
                if ref.name not in adapters and len(adapters) >= self._adapters.max_loaded:
                    break
                adapters[ref.name] = ref.path
            batch.append(waiting.popleft())
            rows += n
        if batch:
            self._prefill(batch)

    def _join_now(self, waiting: deque[PreparedRequest]) -> bool:
        """Whether the waiting requests join the running rows at this step.

        Each join costs a prefill forward of its own, with a fixed cost of about a whole
        decoding step (joining every arrival at once cost a closed loop of 16 clients a
        fifth of its throughput: benchmarks/RESULTS.md, "Figures behind design choices").
        So joiners gather
        until they are ``join_ratio`` of the running rows, or the oldest has waited
        ``join_wait_steps`` steps."""
        rows = sum(item.request.params.n for item in waiting)
        if rows >= self._join_ratio * len(self._live):
            return True
        return self.steps - self._arrived[waiting[0].request.request_id] >= self._join_wait

    def _prefill(self, items: list[PreparedRequest]) -> None:
        for item in items:
            self._arrived.pop(item.request.request_id, None)
        plans = build_rows(items)
        ids = [self._tracker.add(plan) for plan in plans]
        for row, plan in zip(ids, plans, strict=True):
            self._sampler.add(row, plan.sampling)
            if plan.grammar is not None:
                if self._guided is None:
                    self._guided = self._guidance.rows()
                self._guided.add(row, plan.grammar)
        for index, item in enumerate(items):
            rows = [row for row, p in zip(ids, plans, strict=True) if p.request_index == index]
            self._active[item.request.request_id] = _Active(item, rows)
        needed = [self._plan(row).adapter for row in self._live] + [p.adapter for p in plans]
        with torch.inference_mode(False):
            self._adapters.ensure({ref for ref in needed if ref is not None})
        logits = self._kv.prefill(
            self._adapters.model, [plan.prompt_ids for plan in plans], self._adapter_names(ids)
        )
        self.stats.prefills += 1
        self.stats.prefill_rows += len(plans)
        self._live.extend(ids)
        self._advance(logits, ids)

    # --- decoding ------------------------------------------------------------------------
    def _step(self) -> None:
        rows = list(self._live)
        logits = self._kv.decode(
            self._adapters.model, [self._next[row] for row in rows], self._adapter_names(rows)
        )
        self.steps += 1
        self.stats.steps += 1
        self.stats.row_steps += len(rows)
        self._advance(logits, rows)

    def _advance(self, logits: torch.Tensor, rows: list[int]) -> None:
        """Choose the next token of ``rows`` from their ``logits``; finish, stream and hand
        over what is done; drop finished rows from the batch."""
        if self._guided:
            self._guided.mask(logits, rows)
        tokens = self._sampler.choose(logits, rows)
        self._tracker.step(rows, tokens, self._aborted_requests())
        going = [(row, t) for row, t in zip(rows, tokens, strict=True) if not self._finished(row)]
        for row, token in going:
            self._next[row] = token
        if self._guided and going:
            self._guided.advance(*zip(*going, strict=True))
        if self._streamer is not None:
            self._streamer.flush()  # a choice's last delta goes out before its result
        finished = {row for row in rows if self._finished(row)}
        for request_id in {self._plan(row).request_id for row in finished}:
            active = self._active[request_id]
            if all(self._finished(row) for row in active.rows):
                del self._active[request_id]
                self._deliver(active.item, active.rows)
        positions = [i for i, row in enumerate(self._live) if row not in finished]
        if len(positions) < len(self._live):
            self._kv.keep(positions)
            self._live = [self._live[i] for i in positions]

    # --- results -------------------------------------------------------------------------
    def _deliver(self, item: PreparedRequest, rows: list[int]) -> None:
        """Build ``item``'s result from its finished ``rows`` (none: it was aborted before
        it started), forget the rows and hand the result over."""
        request = item.request
        if rows:
            choices = tuple(
                Choice(
                    index=self._plan(row).choice_index,
                    text=self._tracker.text(row),
                    finish_reason=self._tracker.finish_reason(row),
                    completion_tokens=self._tracker.completion_tokens(row),
                )
                for row in rows
            )
        else:
            choices = tuple(Choice(i, "", "stop", 0) for i in range(request.params.n))
            if self._streamer is not None and request.stream:  # each choice ends with a delta
                for choice in choices:
                    self._streamer.send(StreamDelta(request.request_id, choice.index, "", "stop"))
        for row in rows:
            self._tracker.drop(row)
            self._sampler.drop(row)
            self._next.pop(row, None)
            if self._guided is not None:
                self._guided.drop(row)
        result = GenerationResult(
            request_id=request.request_id,
            choices=choices,
            prompt_tokens=len(item.prompt_ids),
            seed=item.seed,
            adapter=request.adapter.name if request.adapter else None,
        )
        if request.request_id in self._keep:
            self._results[request.request_id] = result
        if self._on_result is not None:
            try:
                self._on_result(result)
            except Exception:  # noqa: BLE001 - a failing consumer must not fail the batch
                logger.exception("on_result failed for %r", request.request_id)

    # --- helpers -------------------------------------------------------------------------
    def _plan(self, row: int) -> RowPlan:
        return self._tracker.rows[row]

    def _finished(self, row: int) -> bool:
        return self._tracker.is_finished(row)

    def _live_adapters(self) -> dict[str, str]:
        adapters = {}
        for row in self._live:
            ref = self._plan(row).adapter
            if ref is not None:
                adapters[ref.name] = ref.path
        return adapters

    def _adapter_names(self, rows: list[int]) -> list[str] | None:
        refs = [self._plan(row).adapter for row in rows]
        return self._adapters.adapter_names([ref.name if ref else None for ref in refs])

    def _aborted(self, request_id: str) -> bool:
        if self._should_abort is None:
            return False
        try:
            return bool(self._should_abort(request_id))
        except Exception:  # a broken callback must not take the whole batch down
            logger.exception("should_abort(%r) raised; not aborting", request_id)
            return False

    def _aborted_requests(self) -> set[str]:
        if self._should_abort is None:
            return set()
        return {r for r in self._tracker.live_request_ids() if self._aborted(r)}
