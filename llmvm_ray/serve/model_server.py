"""The model replica: one ``Engine`` (a base model plus its LoRA adapters) behind a batcher.

The builder turns this class into one Serve deployment per configured base model. Requests
come from the ingress through a ``DeploymentHandle``; each is validated on arrival (so one bad
request never fails the batch it would have joined), then decoded in a shared batch that may
mix adapters. Adapters are loaded on demand from the path the ingress resolved, and the engine
keeps the least recently used ones up to ``max_adapters_per_replica``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import AsyncIterator
from typing import Any

from llmvm_ray.config import ModelConfig
from llmvm_ray.engine.batching import Batcher
from llmvm_ray.engine.types import GenerationRequest, GenerationResult, StreamDelta

# Prompts up to this many characters are tokenized on the event loop (~0.3 ms measured).
_INLINE_PROMPT_CHARS = 500


class ModelServer:
    def __init__(self, model_config: ModelConfig) -> None:
        import torch

        from llmvm_ray.engine import Engine  # heavy: torch + transformers
        from llmvm_ray.engine.loader import resolve_device
        from llmvm_ray.engine.process import EngineProcess
        from llmvm_ray.observability.metrics import AdapterMetrics, DecodeMetrics

        # torch's default of one thread per core thrashes as soon as anything else shares the
        # cores (measured: a 16-row batch 25 ms with 1 thread, 8.7 s with 2 under load); use
        # the CPUs this replica reserved. (The engine process does the same.)
        torch.set_num_threads(max(1, int(model_config.num_cpus)))
        self.config = model_config
        self.metrics = AdapterMetrics(_application(), model_config.name)
        self.decode_metrics = DecodeMetrics(_application(), model_config.name)
        mode = model_config.engine_process
        if mode == "auto":
            mode = "on" if resolve_device(model_config.device).type == "cuda" else "off"
        self.engine: Engine | EngineProcess = (
            EngineProcess(model_config, on_adapter_event=self.metrics.event)
            if mode == "on"
            else Engine(model_config, on_adapter_event=self.metrics.event)
        )
        self._in_process = mode == "off"
        self.batcher = Batcher(
            self.engine.generate,
            max_batch_size=model_config.max_batch_size,
            wait_s=model_config.batch_wait_timeout_s,
            continuous=model_config.continuous_batching,
        )

    def _prepare(
        self, request: GenerationRequest, messages: list[dict[str, str]] | None
    ) -> GenerationRequest:
        """Render chat messages with this model's template, then validate the request."""
        if messages is not None:
            request = dataclasses.replace(request, prompt=self.engine.render_chat(messages))
        self.engine.validate(request)
        return request

    async def _prepared(
        self, request: GenerationRequest, messages: list[dict[str, str]] | None
    ) -> GenerationRequest:
        """``_prepare`` off the event loop when it can take milliseconds (a grammar to
        compile, a chat template, a long prompt to tokenize); a short plain prompt is
        tokenized inline: a thread hop costs more, and it waits for the GIL that the decoding
        thread holds. With an engine process every check is a round trip: never inline."""
        if (
            self._in_process
            and messages is None
            and request.params.guided is None
            and len(request.prompt) <= _INLINE_PROMPT_CHARS
        ):
            return self._prepare(request, None)
        return await asyncio.to_thread(self._prepare, request, messages)

    async def generate(
        self, request: GenerationRequest, messages: list[dict[str, str]] | None = None
    ) -> GenerationResult:
        request = await self._prepared(request, messages)
        return await self.batcher.generate(request)

    async def generate_stream(
        self, request: GenerationRequest, messages: list[dict[str, str]] | None = None
    ) -> AsyncIterator[StreamDelta | GenerationResult]:
        """Deltas as they decode, then the final result (call with ``stream=True``)."""
        request = await self._prepared(request, messages)
        async for event in self.batcher.stream(request):
            yield event

    async def info(self) -> dict[str, Any]:
        return {
            "model": self.config.name,
            "pid": os.getpid(),
            "engine_pid": None if self._in_process else self.engine.pid,
            "max_model_len": self.engine.max_model_len,
            "loaded_adapters": self.engine.loaded_adapters(),
            "batches_run": self.batcher.batches_run,
            "sequences_run": self.batcher.sequences_run,
            "decoding": await self._decode_stats(),
        }

    async def check_health(self) -> None:
        """Serve's health probe: the replica is healthy while its batch loop (and its engine
        process, if it has one) is alive. Also pushes the decoding counters to the metrics
        (every ``health_check_period_s``, about Ray's own metrics export interval)."""
        self.batcher.check()
        self.engine.check()
        await self._decode_stats()

    async def _decode_stats(self) -> dict[str, int]:
        """The engine's decoding counters (recorded into the metrics on the way)."""
        if self._in_process:
            stats = self.engine.stats()
        else:  # a round trip to the engine process: off the event loop
            stats = await asyncio.to_thread(self.engine.stats)
        self.decode_metrics.update(stats)
        return stats

    def __del__(self) -> None:
        """Serve calls this when it stops the replica: stop the engine process with it."""
        engine = getattr(self, "engine", None)
        if engine is not None and not getattr(self, "_in_process", True):
            engine.close()


def _application() -> str:
    """The Serve application this replica belongs to (a metrics label)."""
    from ray import serve

    try:
        return serve.get_replica_context().app_name
    except Exception:  # noqa: BLE001 - not inside a replica (a plain object in tests)
        return "none"
