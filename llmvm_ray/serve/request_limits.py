"""Size limits on what a client sends (the ``serve.max_*`` options), checked at the edge.

They are configuration, which the wire models' validators (``protocol``) cannot see, so they
are checked here, on the parsed body, before anything costs: no tokenizing, no grammar
compile, no replica call. Each failure is a 400 naming the field. The body's own size is
checked earlier still, before it is parsed or authenticated (``routes.BodyLimit``).
"""

from __future__ import annotations

import json

from llmvm_ray.config import ServeConfig
from llmvm_ray.errors import InvalidRequestError
from llmvm_ray.protocol import (
    AgentRunRequest,
    ChatCompletionRequest,
    CompleteRequest,
    CompletionRequest,
    GuidedFields,
)

Request = CompletionRequest | ChatCompletionRequest | CompleteRequest | AgentRunRequest


def check_request(request: Request, limits: ServeConfig) -> None:
    """Raise ``InvalidRequestError`` naming the first field of ``request`` over a limit."""
    if isinstance(request, AgentRunRequest):
        _text(request.question, "question", limits)
        _count(len(request.tools), limits.max_tools, "tools")
        return
    _text(request.context, "context", limits)
    _guide(request, limits)
    if isinstance(request, CompleteRequest):
        _text(request.prompt, "prompt", limits)
        _stops(request.stop_list(), "stoptoken", limits)
        _count(len(request.tools or ()), limits.max_tools, "tools")
        return
    _stops(request.stop_list(), "stop", limits)
    if request.n > limits.max_n:
        raise InvalidRequestError(f"n must be at most {limits.max_n}", param="n")
    if isinstance(request, CompletionRequest):
        prompts = request.prompts()
        _count(len(prompts), limits.max_prompts, "prompt")
        for prompt in prompts:
            _text(prompt, "prompt", limits)
        return
    _count(len(request.messages), limits.max_messages, "messages")
    for i, message in enumerate(request.messages):
        _text(message.text(), f"messages.{i}.content", limits)


def _count(count: int, most: int, param: str) -> None:
    if count > most:
        raise InvalidRequestError(f"{param} has {count} entries, at most {most}", param=param)


def _text(text: str | None, param: str, limits: ServeConfig) -> None:
    if text is not None and len(text) > limits.max_prompt_chars:
        raise InvalidRequestError(
            f"{param} has {len(text)} characters, at most {limits.max_prompt_chars}",
            param=param,
        )


def _stops(stops: list[str], param: str, limits: ServeConfig) -> None:
    if len(stops) > limits.max_stop_sequences:
        raise InvalidRequestError(
            f"at most {limits.max_stop_sequences} stop sequences are allowed", param=param
        )
    if any(len(s) > limits.max_stop_chars for s in stops):
        raise InvalidRequestError(
            f"stop sequences must be at most {limits.max_stop_chars} characters", param=param
        )


def _guide(request: GuidedFields, limits: ServeConfig) -> None:
    """Guides are bounded by their source's size: llguidance builds grammars lazily, so a
    large one costs on every decoding step (its fuel limits bound the rest)."""
    if request.guided_choice is not None:
        _count(len(request.guided_choice), limits.max_guided_choices, "guided_choice")
        size, param = sum(len(c) for c in request.guided_choice), "guided_choice"
    elif request.guided_regex is not None:
        size, param = len(request.guided_regex), "guided_regex"
    elif request.guided_json is not None:
        # `response_format` arrives here as guided_json (ChatCompletionRequest._format).
        given = getattr(request, "response_format", None)
        param = "response_format" if given is not None and given.type != "text" else "guided_json"
        size = len(json.dumps(request.guided_json))
    else:
        return
    if size > limits.max_guide_chars:
        raise InvalidRequestError(
            f"{param} has {size} characters, at most {limits.max_guide_chars}", param=param
        )
