"""Plain data passed into and out of the engine.

These are the engine's whole vocabulary: the Serve layer translates HTTP requests into
``GenerationRequest`` objects and ``GenerationResult`` / ``StreamDelta`` back into OpenAI
shapes. Dataclasses (not pydantic) because they cross Ray boundaries often and cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class GuidedSpec:
    """A decoding constraint. Exactly one field is set.

    ``json_schema`` is a JSON-schema dict (``{}`` or ``{"type": "object"}`` means any object);
    ``type`` is LLM-VM's ``type="integer"|"float"``.
    """

    choices: tuple[str, ...] | None = None
    regex: str | None = None
    json_schema: dict[str, Any] | None = None
    type: Literal["integer", "float"] | None = None

    def __post_init__(self) -> None:
        set_fields = [
            name
            for name in ("choices", "regex", "json_schema", "type")
            if getattr(self, name) is not None
        ]
        if len(set_fields) != 1:
            raise ValueError(f"exactly one guided-output field must be set, got {set_fields}")


@dataclass(frozen=True)
class AdapterRef:
    """A LoRA adapter to apply: its serving name and the folder holding it (PEFT format)."""

    name: str
    path: str


@dataclass(frozen=True)
class SamplingParams:
    """Per-request generation settings.

    ``temperature == 0`` means greedy. ``seed`` fixes the sampled text: the same seed, prompt,
    model and adapter give identical text whatever else shares the batch. Choice ``i`` of an
    ``n > 1`` request uses a seed derived from ``(seed, i)``. ``presence_penalty`` and
    ``frequency_penalty`` (OpenAI's, -2 to 2) lower the logit of every token the choice has
    already generated, once / once per occurrence (the prompt's tokens are not counted, as
    in OpenAI's and vLLM's). ``logit_bias`` adds ``(token id, bias)`` pairs (-100 to 100) to
    the logits at every step. With ``fit_max_tokens`` (the request named no ``max_tokens``)
    ``max_tokens`` is a cap: the engine lowers it to what fits in the context after the
    prompt, as vLLM does, instead of refusing the request.
    """

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    stop: tuple[str, ...] = ()
    seed: int | None = None
    n: int = 1
    guided: GuidedSpec | None = None
    fit_max_tokens: bool = False


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt to complete (already chat-templated if it came from chat).

    ``stream``: whether its text goes to the generate call's ``on_delta`` as it decodes. A
    batch serving streaming and non-streaming clients at once sets it per request, so the
    engine spends nothing on deltas nobody reads (with an engine process, one message per
    row per step).
    """

    request_id: str
    prompt: str
    params: SamplingParams = field(default_factory=SamplingParams)
    adapter: AdapterRef | None = None
    stream: bool = True


@dataclass(frozen=True)
class Choice:
    index: int
    text: str
    finish_reason: FinishReason
    completion_tokens: int


@dataclass(frozen=True)
class GenerationResult:
    request_id: str
    choices: tuple[Choice, ...]
    prompt_tokens: int
    seed: int  # the seed actually used (drawn at random when the request gave none)
    adapter: str | None = None

    @property
    def completion_tokens(self) -> int:
        return sum(c.completion_tokens for c in self.choices)


@dataclass(frozen=True)
class StreamDelta:
    """New text for one choice of one request, emitted while decoding.

    The final delta of a choice carries its ``finish_reason``. Text already emitted is never
    retracted: text that could still become a stop sequence is held back until it cannot.
    """

    request_id: str
    index: int
    text: str
    finish_reason: FinishReason | None = None
