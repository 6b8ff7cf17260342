"""Translation between the wire models (OpenAI's and LLM-VM's) and engine requests/results.

Each pair of types is converted here once — a request's fields to ``SamplingParams``, results
to responses and their ``llmvm`` metadata — for the plain and the optimizing endpoints alike.
Pure functions, no Ray and no HTTP: the ingress calls them on the way in and out.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

from llmvm_ray.engine.types import (
    AdapterRef,
    GenerationRequest,
    GenerationResult,
    GuidedSpec,
    SamplingParams,
)
from llmvm_ray.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompleteRequest,
    CompletionChoice,
    CompletionResponse,
    GuidedFields,
    LLMVMMetadata,
    SamplingFields,
    Usage,
)


@dataclass(frozen=True)
class Target:
    """What a request's ``model`` resolved to."""

    requested: str  # the name the client used, echoed back in responses
    base: str
    adapter: AdapterRef | None = None

    @property
    def served_by(self) -> str:
        return "adapter" if self.adapter else "base"


def guided_spec(fields: GuidedFields) -> GuidedSpec | None:
    if fields.guided_choice is not None:
        return GuidedSpec(choices=tuple(fields.guided_choice))
    if fields.guided_regex is not None:
        return GuidedSpec(regex=fields.guided_regex)
    if fields.guided_json is not None:
        return GuidedSpec(json_schema=fields.guided_json)
    if fields.guided_type is not None:
        return GuidedSpec(type=fields.guided_type)
    return None


def seed_of(requested: int | None) -> int:
    """The request's seed, or a fresh one: every response reports its seed, so even an
    unseeded request can be replayed."""
    return requested if requested is not None else secrets.randbits(63)


def sampling_params(
    fields: SamplingFields | CompleteRequest, default_max_tokens: int, seed: int
) -> SamplingParams:
    """A request's generation settings. LLM-VM's ``/v1/complete`` has no penalties,
    ``logit_bias`` or ``n``: they keep their neutral values. A request that names no
    ``max_tokens`` gets what fits in the model's context, at most ``default_max_tokens``
    (vLLM's rule; OpenAI's clients often leave it out)."""
    extra: dict[str, Any] = {}
    if isinstance(fields, SamplingFields):
        extra = {
            "presence_penalty": fields.presence_penalty,
            "frequency_penalty": fields.frequency_penalty,
            "logit_bias": fields.logit_bias_pairs(),
            "n": fields.n,
        }
    return SamplingParams(
        max_tokens=fields.max_tokens or default_max_tokens,
        # Without max_tokens a request gets what fits in the context, up to the default.
        fit_max_tokens=fields.max_tokens is None,
        temperature=fields.temperature,
        top_p=fields.top_p,
        stop=tuple(fields.stop_list()),
        seed=seed,
        guided=guided_spec(fields),
        **extra,
    )


def generation_request(
    request_id: str, prompt: str, params: SamplingParams, target: Target
) -> GenerationRequest:
    return GenerationRequest(
        request_id=request_id, prompt=prompt, params=params, adapter=target.adapter
    )


def usage_of(results: list[GenerationResult]) -> Usage:
    prompt = sum(r.prompt_tokens for r in results)
    completion = sum(r.completion_tokens for r in results)
    return Usage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )


def metadata(target: Target, seed: int, started: float, usage: Usage) -> LLMVMMetadata:
    return LLMVMMetadata.since(
        started,
        model=target.requested,
        base_model=target.base,
        adapter=target.adapter.name if target.adapter else None,
        served_by=target.served_by,
        seed=seed,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
    )


def completion_response(
    response_id: str,
    created: int,
    target: Target,
    results: list[GenerationResult],
    n: int,
    meta: LLMVMMetadata,
    echo_prompts: list[str] | None = None,
) -> CompletionResponse:
    """Choices of prompt ``i`` get indices ``i * n .. i * n + n - 1``, as OpenAI numbers them."""
    choices = []
    for i, result in enumerate(results):
        prefix = echo_prompts[i] if echo_prompts else ""
        for choice in result.choices:
            choices.append(
                CompletionChoice(
                    index=i * n + choice.index,
                    text=prefix + choice.text,
                    finish_reason=choice.finish_reason,
                )
            )
    return CompletionResponse(
        id=response_id,
        created=created,
        model=target.requested,
        choices=choices,
        usage=usage_of(results),
        llmvm=meta,
    )


def chat_response(
    response_id: str, created: int, target: Target, result: GenerationResult, meta: LLMVMMetadata
) -> ChatCompletionResponse:
    return ChatCompletionResponse(
        id=response_id,
        created=created,
        model=target.requested,
        choices=[
            ChatChoice(
                index=c.index,
                message=AssistantMessage(content=c.text),
                finish_reason=c.finish_reason,
            )
            for c in result.choices
        ],
        usage=usage_of([result]),
        llmvm=meta,
    )


def chat_messages(request: ChatCompletionRequest) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.text()} for m in request.messages]


def sse(payload: object) -> str:
    """One server-sent event carrying a JSON payload (a pydantic model or plain data)."""
    dump = getattr(payload, "model_dump_json", None)
    return f"data: {dump() if dump else json.dumps(payload)}\n\n"


SSE_DONE = "data: [DONE]\n\n"
