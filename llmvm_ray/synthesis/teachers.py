"""The teacher a synthesis run talks to, and the choices that depend on it.

A remote teacher (``teacher.base_url``) is reached through ``engine.teacher.OpenAITeacher``
with the SDK's own retries turned off: a synthesis unit retries itself (capped, with backoff)
so that every 429 and timeout is counted. A teacher this app hosts (no ``base_url``) is
reached through its Serve deployment, and can be constrained to JSON (``guided_json``).
"""

from __future__ import annotations

from typing import Any

from llmvm_ray.config import Config
from llmvm_ray.engine.teacher import OpenAITeacher
from llmvm_ray.synthesis.encoding import Encoding
from llmvm_ray.synthesis.templates import Family, TemplateSet, resolve_family


def hosted(config: Config) -> bool:
    return config.teacher.base_url is None


def resolve_encoding(config: Config) -> Encoding:
    """``auto``: guided JSON when we host the teacher (it always parses), else plain JSON."""
    chosen = config.synthesis.encoding
    if chosen == "auto":
        return "guided_json" if hosted(config) else "json"
    return chosen


def templates(config: Config) -> TemplateSet:
    s = config.synthesis
    family: Family = resolve_family(s.family, config.teacher.api)
    return TemplateSet.build(family, s.prompt_variants or None, s.system_prompt)


def build_teacher(config: Config, model: str | None = None) -> Any:
    """The teacher client for synthesis requests (see the module docstring)."""
    t = config.teacher
    name = model or t.model
    if t.base_url:
        return OpenAITeacher(
            base_url=t.base_url,
            model=name,
            api_key=t.api_key.get_secret_value() if t.api_key else None,
            api=t.api,
            timeout_s=config.synthesis.request_timeout_s,
            max_retries=0,
            max_concurrency=config.synthesis.max_in_flight,
        )
    from llmvm_ray.optimizer.manager import _model_handle
    from llmvm_ray.optimizer.router import LocalTeacher

    return LocalTeacher(name, _model_handle(config, name))
