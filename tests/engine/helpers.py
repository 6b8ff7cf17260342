"""Small helpers shared by the engine tests."""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from llmvm_ray.config import ModelConfig
from llmvm_ray.engine import AdapterRef, GenerationRequest, SamplingParams, StreamDelta


def model_config(path: Path, **overrides: Any) -> ModelConfig:
    """The engine tests' model config: CPU unless ``LLMVM_TEST_DEVICE`` names another device
    (``cuda`` for the GPU check, with ``LLMVM_TEST_DTYPE`` for its dtype, default ``auto``)."""
    overrides.setdefault("device", os.environ.get("LLMVM_TEST_DEVICE", "cpu"))
    overrides.setdefault("dtype", os.environ.get("LLMVM_TEST_DTYPE", "auto"))
    return ModelConfig(name="tiny", model_uri=str(path), **overrides)


def req(
    request_id: str,
    prompt: str = "Hello world",
    adapter: AdapterRef | None = None,
    **params: Any,
) -> GenerationRequest:
    """A GenerationRequest with the given sampling params."""
    return GenerationRequest(request_id, prompt, SamplingParams(**params), adapter)


def texts(results: list) -> dict[str, list[str]]:
    """request_id -> choice texts."""
    return {r.request_id: [c.text for c in r.choices] for r in results}


def joined_deltas(deltas: list[StreamDelta]) -> dict[tuple[str, int], str]:
    """(request_id, choice index) -> concatenated streamed text."""
    out: dict[tuple[str, int], str] = defaultdict(str)
    for delta in deltas:
        out[(delta.request_id, delta.index)] += delta.text
    return dict(out)


def long_sample(engine: Any, max_tokens: int = 24, min_chars: int = 16) -> tuple[int, str]:
    """A (seed, text) whose sampled text runs to max_tokens with at least ``min_chars``
    characters (a random tiny model sometimes samples EOS at once)."""
    for seed in range(50):
        choice = engine.generate([req("probe", seed=seed, max_tokens=max_tokens)])[0].choices[0]
        text = choice.text
        long_enough = choice.finish_reason == "length" and len(text) >= min_chars
        if long_enough and "\ufffd" not in text[:min_chars]:
            return seed, text
    raise AssertionError("no seed gave a long sample")
