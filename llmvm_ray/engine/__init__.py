"""The engine: a transformers model generating batches with seeds, stops, guided output and
LoRA adapters. No Ray in here.

Importing this package is free: ``Engine`` (which pulls in torch and transformers) is
imported on first attribute access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llmvm_ray.engine.types import (
    AdapterRef,
    Choice,
    FinishReason,
    GenerationRequest,
    GenerationResult,
    GuidedSpec,
    SamplingParams,
    StreamDelta,
)

if TYPE_CHECKING:
    from llmvm_ray.engine.engine import Engine

__all__ = [
    "AdapterRef",
    "Choice",
    "Engine",
    "FinishReason",
    "GenerationRequest",
    "GenerationResult",
    "GuidedSpec",
    "SamplingParams",
    "StreamDelta",
]


def __getattr__(name: str) -> Any:
    if name == "Engine":
        from llmvm_ray.engine.engine import Engine

        return Engine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
