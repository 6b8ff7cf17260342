"""The model replica: one engine (an ``EngineClient``: a base model plus its LoRA adapters).

The builder turns this class into one Serve deployment per configured base model. Requests
come from the ingress through a ``DeploymentHandle`` and go to the engine, which validates
each on arrival and decodes them in shared batches that may mix adapters. Adapters are
loaded on demand from the path the ingress resolved, and the engine keeps the least recently
used ones up to ``max_adapters_per_replica``. What the replica adds is Serve's side: metrics,
health checks, ``info`` and stopping the engine with the replica.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

from llmvm_ray.config import ModelConfig
from llmvm_ray.engine import EngineClient, build_engine
from llmvm_ray.engine.types import GenerationRequest, GenerationResult, StreamDelta


class ModelServer:
    def __init__(self, model_config: ModelConfig) -> None:
        from llmvm_ray.observability.metrics import AdapterMetrics, DecodeMetrics

        self.config = model_config
        self.metrics = AdapterMetrics(_application(), model_config.name)
        self.decode_metrics = DecodeMetrics(_application(), model_config.name)
        self.engine: EngineClient = build_engine(model_config, on_adapter_event=self.metrics.event)

    async def generate(
        self, request: GenerationRequest, messages: list[dict[str, str]] | None = None
    ) -> GenerationResult:
        return await self.engine.generate(request, messages)

    async def generate_stream(
        self, request: GenerationRequest, messages: list[dict[str, str]] | None = None
    ) -> AsyncIterator[StreamDelta | GenerationResult]:
        """Deltas as they decode, then the final result (call with ``stream=True``)."""
        async for event in self.engine.stream(request, messages):
            yield event

    async def info(self) -> dict[str, Any]:
        return {
            "model": self.config.name,
            "pid": os.getpid(),
            "max_model_len": self.engine.max_model_len,
            "loaded_adapters": await self.engine.loaded_adapters(),
            **self.engine.info(),  # engine_pid, batches_run, sequences_run
            "decoding": await self._decode_stats(),
        }

    async def check_health(self) -> None:
        """Serve's health probe: the replica is healthy while its engine is. Also pushes the
        decoding counters to the metrics (every ``health_check_period_s``, about Ray's own
        metrics export interval)."""
        self.engine.check()
        await self._decode_stats()

    async def _decode_stats(self) -> dict[str, int]:
        """The engine's decoding counters (recorded into the metrics on the way)."""
        stats = await self.engine.stats()
        self.decode_metrics.update(stats)
        return stats

    def __del__(self) -> None:
        """Serve calls this when it stops the replica: stop the engine (its process) with it."""
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.close()


def _application() -> str:
    """The Serve application this replica belongs to (a metrics label)."""
    from ray import serve

    try:
        return serve.get_replica_context().app_name
    except Exception:  # noqa: BLE001 - not inside a replica (a plain object in tests)
        return "none"
