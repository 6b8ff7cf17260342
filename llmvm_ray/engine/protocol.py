"""``EngineClient``: what a model replica needs of an engine, request by request.

The replica holds one and knows nothing of how it schedules: ``batching.BatchedEngine``
batches requests for our batch-level ``Engine`` (or ``EngineProcess``); an engine with its
own scheduler (vLLM's ``AsyncLLM``) would implement this directly, and ``build_engine``
would choose it, touching neither serve/ nor the optimizer. Hence async and per request, as
vLLM's ``EngineClient`` and Ray Serve LLM's ``LLMEngine``. A request names its adapter and
the engine loads it on demand; ``load_adapter`` / ``unload_adapter`` are for loading ahead
of traffic and freeing memory.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from typing import Any

from llmvm_ray.engine.types import AdapterRef, GenerationRequest, GenerationResult, StreamDelta

Messages = list[dict[str, str]]


class EngineClient(ABC):
    """One loaded base model serving generation requests.

    ``generate`` and ``stream`` validate the request before it meets any other, raising
    ``InvalidRequestError`` naming the field, so a bad request fails alone. With ``messages``
    the prompt is those chat messages rendered with the model's template.
    """

    max_model_len: int  # the context length: prompt plus completion tokens

    @abstractmethod
    async def generate(
        self, request: GenerationRequest, messages: Messages | None = None
    ) -> GenerationResult:
        """Run ``request`` to completion."""

    @abstractmethod
    def stream(
        self, request: GenerationRequest, messages: Messages | None = None
    ) -> AsyncIterator[StreamDelta | GenerationResult]:
        """The request's deltas as they decode, then its result. Closing the iterator early
        (the client went away) aborts the request."""

    @abstractmethod
    async def validate(
        self, request: GenerationRequest, messages: Messages | None = None
    ) -> GenerationRequest:
        """The request as it will run (chat rendered), or ``InvalidRequestError`` naming the
        field. ``generate`` and ``stream`` call it themselves."""

    @abstractmethod
    async def load_adapter(self, adapter: AdapterRef) -> None:
        """Load ``adapter`` now (evicting the least recently used one beyond the limit)."""

    @abstractmethod
    async def unload_adapter(self, name: str) -> None:
        """Free adapter ``name`` once no running row uses it (idempotent)."""

    @abstractmethod
    async def loaded_adapters(self) -> list[str]:
        """The adapters in memory, least recently used first."""

    @abstractmethod
    async def stats(self) -> dict[str, int]:
        """Cumulative decoding counters, for the replica's metrics (``DecodeMetrics``)."""

    @abstractmethod
    def info(self) -> dict[str, Any]:
        """Engine-specific entries of the replica's ``info`` (tests and benchmarks read them)."""

    @abstractmethod
    def check(self) -> None:
        """Raise if the engine can no longer serve: Serve's health check restarts the replica."""

    @abstractmethod
    def close(self) -> None:
        """Release what outlives this object (a child process). Idempotent."""
