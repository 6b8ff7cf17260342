"""The engine: one transformers model answering batches of generation requests.

A Serve replica runs it behind ``batching.BatchedEngine``. It knows nothing of HTTP or Ray:
requests come in as ``GenerationRequest`` values, results go out as ``GenerationResult``
values and, while decoding, as ``StreamDelta`` callbacks.

Requests decode together in one left-padded batch with our own decoding loop
(``running.BatchRun`` over ``decoding.KVBatch``) rather than HF ``generate``, because a
serving engine needs what ``generate`` cannot do: requests joining a batch that is already
decoding (continuous batching, through a ``RequestInbox``), finished rows leaving it at once,
and per-row sampling, grammars, stops, adapters and aborts. A seeded row's text does not
depend on what else shares its batch or when it joined.

Thread safety: every method may be called from any thread. ``generate`` holds one lock, so
one Engine runs one ``generate`` at a time (a second caller waits); adapter loading and
unloading are queued and run between two decoding steps of a running batch (deferred while
running rows use the adapter concerned); ``validate``, ``count_tokens`` and ``render_chat``
do not wait for a running batch.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llmvm_ray.engine.adapters import AdapterEventHook, AdapterManager
from llmvm_ray.engine.guided import Guidance
from llmvm_ray.engine.inbox import RequestInbox
from llmvm_ray.engine.loader import load_model
from llmvm_ray.engine.planning import PreparedRequest
from llmvm_ray.engine.prompting import encode_prompt
from llmvm_ray.engine.prompting import render_chat as _render_chat
from llmvm_ray.engine.running import BatchRun, DecodeStats
from llmvm_ray.engine.sampling import random_seed
from llmvm_ray.engine.types import AdapterRef, GenerationRequest, GenerationResult, StreamDelta
from llmvm_ray.engine.validation import check_params
from llmvm_ray.errors import InvalidRequestError

if TYPE_CHECKING:
    from llmvm_ray.config import ModelConfig

logger = logging.getLogger(__name__)


class Engine:
    """A loaded model that generates, streams, constrains and applies adapters per row."""

    def __init__(
        self, model_config: ModelConfig, on_adapter_event: AdapterEventHook | None = None
    ) -> None:
        self._config = model_config
        self._loaded = load_model(model_config)
        self.model_name: str = model_config.name
        self.max_model_len: int = self._loaded.max_model_len
        self._lock = threading.Lock()
        self._ops: deque[_AdapterOp] = deque()
        self._ops_lock = threading.Lock()
        self._stats = DecodeStats()
        self._adapters = AdapterManager(
            self._loaded.model,
            self._loaded.device,
            model_config.max_adapters_per_replica,
            on_event=on_adapter_event,
        )
        self._guidance = Guidance(
            self._loaded.tokenizer, self._loaded.vocab_size, self._loaded.eos_token_ids
        )
        logger.info(
            "engine %s ready: %s on %s, max_model_len %d",
            self.model_name,
            model_config.model_uri,
            self._loaded.device,
            self.max_model_len,
        )

    # --- text ----------------------------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` takes as a prompt (with any BOS the tokenizer adds), i.e. the
        ``prompt_tokens`` a request with this prompt reports."""
        return len(encode_prompt(self._loaded.tokenizer, text))

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        """The prompt for chat ``messages``: the tokenizer's chat template with the
        generation prompt added; without a template, ``"<role>: <content>"`` lines followed
        by ``"assistant:"``."""
        return _render_chat(self._loaded.tokenizer, messages)

    # --- validation ----------------------------------------------------------------------
    def validate(self, request: GenerationRequest) -> int:
        """Check ``request`` without generating; return its prompt token count.

        Raises InvalidRequestError with ``param`` naming the field: ``prompt``, ``n``,
        ``max_tokens`` (also when prompt + max_tokens exceeds ``max_model_len``),
        ``temperature``, ``top_p``, ``stop``, ``seed``, ``guided_regex`` / ``guided_json`` /
        ``guided_choice``, or ``model`` (adapter missing or not a LoRA adapter). Grammars are
        compiled here and cached, so ``generate`` reuses them.
        """
        return len(self._prepare(request, seed=0).prompt_ids)

    def _prepare(self, request: GenerationRequest, seed: int | None) -> PreparedRequest:
        check_params(request, self._loaded.vocab_size)
        params = request.params
        grammar = self._guidance.compile(params.guided) if params.guided is not None else None
        if request.adapter is not None:
            self._adapters.check(request.adapter)
        prompt_ids = encode_prompt(self._loaded.tokenizer, request.prompt)
        room = self.max_model_len - len(prompt_ids)
        if params.fit_max_tokens and params.max_tokens > room:
            if room < 1:
                raise InvalidRequestError(
                    f"the prompt has {len(prompt_ids)} tokens: it fills the model's context "
                    f"length of {self.max_model_len}",
                    param="prompt",
                )
            params = dataclasses.replace(params, max_tokens=room)
            request = dataclasses.replace(request, params=params)
        if len(prompt_ids) + params.max_tokens > self.max_model_len:
            raise InvalidRequestError(
                f"the prompt has {len(prompt_ids)} tokens; with max_tokens {params.max_tokens} "
                f"that exceeds the model's context length of {self.max_model_len}",
                param="max_tokens",
            )
        chosen_seed = params.seed if params.seed is not None else seed
        return PreparedRequest(
            request=request,
            prompt_ids=tuple(prompt_ids),
            seed=chosen_seed if chosen_seed is not None else random_seed(),
            grammar=grammar,
        )

    # --- generation ----------------------------------------------------------------------
    def generate(
        self,
        requests: list[GenerationRequest],
        on_delta: Callable[[StreamDelta], None] | None = None,
        should_abort: Callable[[str], bool] | None = None,
        on_result: Callable[[GenerationResult], None] | None = None,
        inbox: RequestInbox | None = None,
    ) -> list[GenerationResult]:
        """Complete every request, in one batch where possible; with an ``inbox``, also
        every request put into it until it is closed (continuous batching).

        Results of ``requests`` come back in request order. ``on_delta`` (called from this
        thread) receives each choice's text as it becomes final, the last delta of a choice
        with its ``finish_reason``; the deltas of a choice concatenate to its
        ``Choice.text``. ``on_result`` (from this thread too) receives each request's result
        as soon as all its choices are finished, after the request's last delta: a short
        answer need not wait for the batch's longest; it is the only way the results of
        requests that came through the inbox come back. ``should_abort(request_id)`` is
        polled every step; a request it flags stops at once with finish reason ``stop``.
        Every request of ``requests`` is validated first and the first invalid one raises
        InvalidRequestError before any decoding (callers batching independent requests
        should ``validate`` each one before batching it); an invalid request from the inbox
        goes to ``inbox.reject`` instead.
        """
        if not requests and inbox is None:
            return []
        ids = [r.request_id for r in requests]
        if len(set(ids)) != len(ids):
            raise ValueError("request_id must be unique within one generate call")
        prepared = [self._prepare(request, seed=None) for request in requests]
        with self._lock:
            run = BatchRun(
                self._loaded,
                self._adapters,
                self._guidance,
                service=self._run_ops,
                on_delta=on_delta,
                should_abort=should_abort,
                on_result=on_result,
                join_ratio=self._config.join_ratio,
                join_wait_steps=self._config.join_wait_steps,
                stats=self._stats,
            )
            results = run.execute(prepared, inbox, lambda r: self._prepare(r, seed=None))
        return [results[request_id] for request_id in ids]

    def stats(self) -> dict[str, int]:
        """The decoding loop's cumulative counters (``DecodeStats``)."""
        return self._stats.as_dict()

    # --- adapters ------------------------------------------------------------------------
    def load_adapter(self, ref: AdapterRef) -> None:
        """Load ``ref`` now (evicting the least recently used adapter if full). Requests
        load their adapter on demand anyway; this is for warming a replica up."""
        self._control(_AdapterOp("load", ref=ref))

    def unload_adapter(self, name: str) -> None:
        """Unload adapter ``name``; unknown names are ignored (unloading is idempotent)."""
        self._control(_AdapterOp("unload", name=name))

    def loaded_adapters(self) -> list[str]:
        """Names of the loaded adapters, least recently used first."""
        return self._control(_AdapterOp("list"))

    def _control(self, op: _AdapterOp) -> Any:
        """Run ``op`` between two decoding steps of the running batch, or now when none
        runs (whoever holds the engine lock runs the queued operations)."""
        with self._ops_lock:
            self._ops.append(op)
        while not op.future.done():
            if self._lock.acquire(timeout=_OP_POLL_S):
                try:
                    self._run_ops({})
                finally:
                    self._lock.release()
        return op.future.result()

    def _run_ops(self, live: Mapping[str, str]) -> bool:
        """Run the queued adapter operations that leave the adapters of running rows
        (``live``: name -> path) alone; True if some must wait for those rows to finish."""
        with self._ops_lock:
            ops = list(self._ops)
            self._ops.clear()
        deferred = [op for op in ops if op.blocked(live, self._adapters)]
        for op in ops:
            if op not in deferred:
                op.apply(self._adapters, live)
        if deferred:
            with self._ops_lock:
                self._ops.extendleft(reversed(deferred))
        return bool(deferred)


# How often a caller waiting for its adapter operation tries the engine lock itself.
_OP_POLL_S = 0.01


@dataclass(eq=False)
class _AdapterOp:
    """A queued adapter operation: ``load`` (``ref``), ``unload`` (``name``) or ``list``."""

    kind: str
    ref: AdapterRef | None = None
    name: str | None = None
    future: Future = field(default_factory=Future)

    def blocked(self, live: Mapping[str, str], adapters: AdapterManager) -> bool:
        """Whether running rows' adapters (``live``) stop this operation for now."""
        if self.kind == "unload":
            return self.name in live
        if self.kind == "load":
            assert self.ref is not None
            if live.get(self.ref.name, self.ref.path) != self.ref.path:
                return True  # would replace a version that running rows use
            loaded = adapters.names()
            full = self.ref.name not in loaded and len(loaded) >= adapters.max_loaded
            return full and all(name in live for name in loaded)  # nothing to evict
        return False

    def apply(self, adapters: AdapterManager, live: Mapping[str, str]) -> None:
        """Run it (never evicting an adapter in ``live``); its caller gets the outcome."""
        try:
            if self.kind == "load":
                assert self.ref is not None
                adapters.load(self.ref, keep=live)
                value = None
            elif self.kind == "unload":
                assert self.name is not None
                adapters.unload(self.name)
                value = None
            else:
                value = adapters.names()
        except Exception as exc:  # noqa: BLE001 - the caller re-raises it
            self.future.set_exception(exc)
        else:
            self.future.set_result(value)
