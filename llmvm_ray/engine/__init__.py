"""The engine: a transformers model generating batches with seeds, stops, guided output and
LoRA adapters, and the ``EngineClient`` contract a model replica serves it through. No Ray in
here.

Importing this package is free: ``Engine`` (which pulls in torch and transformers) is
imported on first attribute access, and ``build_engine`` imports what it builds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llmvm_ray.engine.protocol import EngineClient
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
    from llmvm_ray.config import ModelConfig
    from llmvm_ray.engine.adapters import AdapterEventHook
    from llmvm_ray.engine.engine import Engine

__all__ = [
    "AdapterRef",
    "Choice",
    "Engine",
    "EngineClient",
    "FinishReason",
    "GenerationRequest",
    "GenerationResult",
    "GuidedSpec",
    "SamplingParams",
    "StreamDelta",
    "build_engine",
]


def build_engine(
    model_config: ModelConfig, on_adapter_event: AdapterEventHook | None = None
) -> EngineClient:
    """The engine a model replica serves ``model_config`` with: an ``Engine`` behind a
    ``Batcher``, in a child process (``EngineProcess``) when ``engine_process`` is ``on``, or
    ``auto`` on CUDA, where decoding is Python-bound and would share the GIL with the
    replica's request handling. Blocks until the model is loaded."""
    import torch

    from llmvm_ray.engine.batching import BatchedEngine
    from llmvm_ray.engine.engine import Engine
    from llmvm_ray.engine.loader import resolve_device
    from llmvm_ray.engine.process import EngineProcess

    # torch's default of one thread per core thrashes as soon as anything else shares the
    # cores (benchmarks/RESULTS.md, "Figures behind design choices"); use the CPUs this
    # replica reserved. (The engine process does the same.)
    torch.set_num_threads(max(1, int(model_config.num_cpus)))
    mode = model_config.engine_process
    if mode == "auto":
        mode = "on" if resolve_device(model_config.device).type == "cuda" else "off"
    kind = EngineProcess if mode == "on" else Engine
    return BatchedEngine(kind(model_config, on_adapter_event=on_adapter_event), model_config)


def __getattr__(name: str) -> Any:
    if name == "Engine":
        from llmvm_ray.engine.engine import Engine

        return Engine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
