"""Checks of a request's sampling parameters that need no model.

Each failure is an ``InvalidRequestError`` whose ``param`` names the offending field, so the
edge can answer a 400 that points at it. Checks that need the model (prompt length, grammar,
adapter) live in ``Engine.validate``.
"""

from __future__ import annotations

import math

from llmvm_ray.engine.types import GenerationRequest
from llmvm_ray.errors import InvalidRequestError
from llmvm_ray.limits import MAX_LOGIT_BIAS, MAX_LOGIT_BIAS_TOKENS, MAX_PENALTY, MAX_TEMPERATURE


def check_params(request: GenerationRequest, vocab_size: int) -> None:
    """Raise InvalidRequestError for a malformed prompt or sampling parameter (logit_bias
    token ids must lie below the model's ``vocab_size``)."""
    if not isinstance(request.prompt, str) or not request.prompt:
        raise InvalidRequestError("prompt must be a non-empty string", param="prompt")
    params = request.params
    if not isinstance(params.n, int) or params.n < 1:
        raise InvalidRequestError(f"n must be >= 1, got {params.n}", param="n")
    if not isinstance(params.max_tokens, int) or params.max_tokens < 1:
        raise InvalidRequestError(
            f"max_tokens must be >= 1, got {params.max_tokens}", param="max_tokens"
        )
    if not _in_range(params.temperature, 0.0, MAX_TEMPERATURE):
        raise InvalidRequestError(
            f"temperature must be between 0 and {MAX_TEMPERATURE:g}, got {params.temperature}",
            param="temperature",
        )
    if not _in_range(params.top_p, 0.0, 1.0):
        raise InvalidRequestError(
            f"top_p must be between 0 and 1, got {params.top_p}", param="top_p"
        )
    for name in ("presence_penalty", "frequency_penalty"):
        value = getattr(params, name)
        if not _in_range(value, -MAX_PENALTY, MAX_PENALTY):
            raise InvalidRequestError(
                f"{name} must be between -{MAX_PENALTY:g} and {MAX_PENALTY:g}, got {value}",
                param=name,
            )
    _check_logit_bias(params.logit_bias, vocab_size)
    if any(not isinstance(s, str) or not s for s in params.stop):
        raise InvalidRequestError("stop sequences must be non-empty strings", param="stop")
    seed = params.seed
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise InvalidRequestError(f"seed must be an integer, got {params.seed!r}", param="seed")


def _in_range(value: object, low: float, high: float) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value) and low <= value <= high


def _check_logit_bias(bias: tuple[tuple[int, float], ...], vocab_size: int) -> None:
    """Raise InvalidRequestError (param ``logit_bias``) unless ``bias`` holds at most
    ``MAX_LOGIT_BIAS_TOKENS`` distinct token ids below ``vocab_size`` with biases within
    +-``MAX_LOGIT_BIAS``."""
    if len(bias) > MAX_LOGIT_BIAS_TOKENS:
        raise InvalidRequestError(
            f"logit_bias has {len(bias)} entries, at most {MAX_LOGIT_BIAS_TOKENS}",
            param="logit_bias",
        )
    seen: set[int] = set()
    for token, value in bias:
        if isinstance(token, bool) or not isinstance(token, int) or token < 0:
            raise InvalidRequestError(
                f"logit_bias keys must be token ids (integers >= 0), got {token!r}",
                param="logit_bias",
            )
        if token >= vocab_size:
            raise InvalidRequestError(
                f"logit_bias token id {token} is outside the model's vocabulary of {vocab_size}",
                param="logit_bias",
            )
        if token in seen:
            raise InvalidRequestError(f"logit_bias repeats token id {token}", param="logit_bias")
        seen.add(token)
        if not _in_range(value, -MAX_LOGIT_BIAS, MAX_LOGIT_BIAS):
            raise InvalidRequestError(
                f"logit_bias values must be between -{MAX_LOGIT_BIAS:g} and "
                f"{MAX_LOGIT_BIAS:g}, got {value!r} for token {token}",
                param="logit_bias",
            )
