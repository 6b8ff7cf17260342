"""The engine: one transformers model answering batches of generation requests.

``Engine`` is what a Serve replica holds. It knows nothing of HTTP or Ray: requests come in
as ``GenerationRequest`` values, results go out as ``GenerationResult`` values and, while
decoding, as ``StreamDelta`` callbacks.

A batch runs as ONE padded, left-padded HF ``model.generate`` (on CPU this beat transformers'
continuous batching at every batch size, see ENVIRONMENT.md) in greedy mode, with:

- ``GuidedLogitsProcessor`` (only when a row is constrained) then ``RowSampler`` as the last
  logits processor: per-row grammar, temperature, top-p and random generator, so a seeded
  row's text does not depend on the rest of the batch;
- ``RowStoppingCriteria``: per-row max_tokens, stop strings, EOS and client aborts;
- ``DeltaStreamer`` when the caller streams;
- ``adapter_names`` when LoRA adapters are loaded, so rows of one batch use different ones.

Thread safety: every method may be called from any thread. ``generate`` and adapter loading
hold one lock, so one Engine runs one ``generate`` at a time (a second caller waits);
``validate``, ``count_tokens`` and ``render_chat`` do not wait for a running batch.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from llmvm_ray.engine.adapters import AdapterEventHook, AdapterManager
from llmvm_ray.engine.guided import Guidance
from llmvm_ray.engine.loader import load_model
from llmvm_ray.engine.planning import PreparedRequest, RowPlan, build_rows, split_batches
from llmvm_ray.engine.prompting import encode_prompt
from llmvm_ray.engine.prompting import render_chat as _render_chat
from llmvm_ray.engine.sampling import RowSampler, random_seed
from llmvm_ray.engine.stopping import RowStoppingCriteria
from llmvm_ray.engine.streaming import DeltaStreamer
from llmvm_ray.engine.tracking import RowTracker
from llmvm_ray.engine.types import (
    AdapterRef,
    Choice,
    GenerationRequest,
    GenerationResult,
    StreamDelta,
)
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
        self._lock = threading.RLock()
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
        check_params(request)
        params = request.params
        grammar = self._guidance.compile(params.guided) if params.guided is not None else None
        if request.adapter is not None:
            self._adapters.check(request.adapter)
        prompt_ids = encode_prompt(self._loaded.tokenizer, request.prompt)
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
    ) -> list[GenerationResult]:
        """Complete every request, in one padded batch where possible.

        Results come back in request order. ``on_delta`` (called from this thread) receives
        each choice's text as it becomes final, the last delta of a choice with its
        ``finish_reason``; the deltas of a choice concatenate to its ``Choice.text``.
        ``on_result`` (from this thread too) receives each request's result as soon as all
        its choices are finished, while longer rows of the batch still decode, after the
        request's last delta: a short answer need not wait for the batch's longest.
        ``should_abort(request_id)`` is polled every step; a request it flags stops at once
        with finish reason ``stop``. Every request is validated first and the first invalid
        one raises InvalidRequestError before any decoding: callers batching independent
        requests should ``validate`` each one before batching it.
        """
        if not requests:
            return []
        ids = [r.request_id for r in requests]
        if len(set(ids)) != len(ids):
            raise ValueError("request_id must be unique within one generate call")
        prepared = [self._prepare(request, seed=None) for request in requests]
        results: dict[int, GenerationResult] = {}
        with self._lock:
            batches = split_batches(
                prepared,
                max_adapters=self._adapters.max_loaded,
                max_model_len=self.max_model_len,
            )
            if len(batches) > 1:
                logger.info("running %d requests as %d batches", len(prepared), len(batches))
            for batch in batches:
                rows = build_rows([prepared[i] for i in batch])
                rows_of: dict[int, list[int]] = {}  # request index -> its unfinished rows
                for r, row in enumerate(rows):
                    rows_of.setdefault(batch[row.request_index], []).append(r)

                def collect(
                    tracker: RowTracker,
                    rows: list[RowPlan] = rows,
                    rows_of: dict[int, list[int]] = rows_of,
                ) -> None:
                    """Finish the requests whose rows are all done, each once."""
                    for i, its_rows in list(rows_of.items()):
                        if all(tracker.is_finished(r) for r in its_rows):
                            del rows_of[i]
                            results[i] = _result(prepared[i], rows, its_rows, tracker)
                            if on_result is not None:
                                _notify(on_result, results[i])

                tracker = self._run_batch(
                    rows, on_delta, should_abort, collect if on_result is not None else None
                )
                collect(tracker)
        return [results[i] for i in range(len(prepared))]

    def _run_batch(
        self,
        rows: Sequence[RowPlan],
        on_delta: Callable[[StreamDelta], None] | None,
        should_abort: Callable[[str], bool] | None,
        after_step: Callable[[RowTracker], None] | None = None,
    ) -> RowTracker:
        """One padded ``generate`` over ``rows``; returns the tracker holding the results.
        ``after_step(tracker)`` runs after every decoding step, once that step's deltas
        are out."""
        import torch
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        loaded = self._loaded
        self._adapters.ensure({row.adapter for row in rows if row.adapter is not None})

        tracker = RowTracker(rows, loaded.tokenizer, loaded.eos_token_ids)
        width = max(len(row.prompt_ids) for row in rows)
        input_ids = torch.full((len(rows), width), loaded.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):  # left padding: every prompt ends at the last column
            input_ids[r, width - len(row.prompt_ids) :] = torch.tensor(row.prompt_ids)
            attention_mask[r, width - len(row.prompt_ids) :] = 1

        processors = LogitsProcessorList()
        if any(row.grammar is not None for row in rows):
            processors.append(
                self._guidance.processor([row.grammar for row in rows], tracker.is_finished, width)
            )
        processors.append(RowSampler([row.sampling for row in rows], tracker.is_finished))
        streamer = DeltaStreamer(tracker, on_delta) if on_delta is not None else None
        generation_config = GenerationConfig(
            max_new_tokens=max(row.max_tokens for row in rows),
            do_sample=False,
            num_beams=1,
            eos_token_id=list(loaded.eos_token_ids) or None,
            pad_token_id=loaded.pad_token_id,
        )
        extra = {}
        adapter_names = self._adapters.adapter_names(
            [row.adapter.name if row.adapter else None for row in rows]
        )
        if adapter_names is not None:
            extra["adapter_names"] = adapter_names
        step_done = None
        if after_step is not None:

            def step_done() -> None:
                if streamer is not None:
                    streamer.flush()  # a choice's last delta goes out before its result
                after_step(tracker)

        with torch.inference_mode():
            self._adapters.model.generate(
                input_ids=input_ids.to(loaded.device),
                attention_mask=attention_mask.to(loaded.device),
                generation_config=generation_config,
                logits_processor=processors,
                stopping_criteria=StoppingCriteriaList(
                    [RowStoppingCriteria(tracker, should_abort, step_done)]
                ),
                streamer=streamer,
                **extra,
            )
        tracker.finish_all("length")
        if streamer is not None:
            streamer.flush()
        return tracker

    def check(self) -> None:
        """Health check, for the interface it shares with ``EngineProcess``: an in-process
        engine is alive while its process is."""

    # --- adapters ------------------------------------------------------------------------
    def load_adapter(self, ref: AdapterRef) -> None:
        """Load ``ref`` now (evicting the least recently used adapter if full). Requests
        load their adapter on demand anyway; this is for warming a replica up."""
        with self._lock:
            self._adapters.load(ref)

    def unload_adapter(self, name: str) -> None:
        """Unload adapter ``name``; unknown names are ignored (unloading is idempotent)."""
        with self._lock:
            self._adapters.unload(name)

    def loaded_adapters(self) -> list[str]:
        """Names of the loaded adapters, least recently used first."""
        with self._lock:
            return self._adapters.names()


def _result(
    item: PreparedRequest, rows: Sequence[RowPlan], its_rows: list[int], tracker: RowTracker
) -> GenerationResult:
    """The result of ``item`` from its finished rows (in choice order)."""
    return GenerationResult(
        request_id=item.request.request_id,
        choices=tuple(
            Choice(
                index=rows[r].choice_index,
                text=tracker.text(r),
                finish_reason=tracker.finish_reason(r),
                completion_tokens=tracker.completion_tokens(r),
            )
            for r in its_rows
        ),
        prompt_tokens=len(item.prompt_ids),
        seed=item.seed,
        adapter=item.request.adapter.name if item.request.adapter else None,
    )


def _notify(on_result: Callable[[GenerationResult], None], result: GenerationResult) -> None:
    """Hand ``result`` over; a failing consumer must not fail the batch it shares."""
    try:
        on_result(result)
    except Exception:  # noqa: BLE001
        logger.exception("on_result failed for %r", result.request_id)
