"""The teacher: any OpenAI-compatible endpoint, through the official ``openai`` SDK.

The SDK already retries 408/409/429/5xx and connection errors with exponential backoff and
jitter (honouring ``Retry-After``), so this wrapper only adds what it lacks: a bound on calls
in flight, per-request keys (LLM-VM's ``openai_key``) without a client per key, chat vs
completion APIs, and typed errors. Keys are never logged: error messages carry the upstream
status and message only.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from llmvm_ray.engine.types import GuidedSpec
from llmvm_ray.errors import LLMVMError


class TeacherError(LLMVMError):
    """The teacher failed or refused; nothing was recorded."""

    status = 502
    type = "teacher_error"


class TeacherTimeout(TeacherError):
    status = 504
    type = "teacher_timeout"


class TeacherUnavailable(TeacherError):
    status = 503
    type = "teacher_unavailable"


@dataclass(frozen=True)
class TeacherAnswer:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    model: str


@dataclass(frozen=True)
class TeacherCall:
    """One teacher request: the stable ``context`` and the dynamic ``prompt`` kept apart,
    because chat teachers take the context as the system message."""

    context: str
    prompt: str
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    guided: GuidedSpec | None = None
    api_key: str | None = None  # the request's own key (LLM-VM's openai_key)


class Teacher(Protocol):
    name: str

    async def complete(self, call: TeacherCall) -> TeacherAnswer: ...


def guided_extra_body(guided: GuidedSpec | None) -> dict[str, Any]:
    """Guided output as the vLLM-style fields our own server (and vLLM) understand."""
    if guided is None:
        return {}
    if guided.choices is not None:
        return {"guided_choice": list(guided.choices)}
    if guided.regex is not None:
        return {"guided_regex": guided.regex}
    if guided.json_schema is not None:
        return {"guided_json": guided.json_schema}
    return {"guided_type": guided.type}


class OpenAITeacher:
    """A remote teacher behind an OpenAI-compatible API."""

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: str | None,
        api: Literal["completions", "chat"] = "completions",
        timeout_s: float = 60.0,
        max_retries: int = 3,
        max_concurrency: int = 16,
    ) -> None:
        import openai

        self.name = model
        self._api = api
        self._client = openai.AsyncOpenAI(
            base_url=base_url,
            # The SDK insists on a key; endpoints without auth accept any placeholder.
            api_key=api_key or "none",
            timeout=timeout_s,
            max_retries=max_retries,
        )
        self._limit = asyncio.Semaphore(max_concurrency)

    async def complete(self, call: TeacherCall) -> TeacherAnswer:
        import openai

        client = self._client.with_options(api_key=call.api_key) if call.api_key else self._client
        kwargs: dict[str, Any] = {
            "model": self.name,
            "max_tokens": call.max_tokens,
            "temperature": call.temperature,
            "top_p": call.top_p,
            "stop": list(call.stop) or None,
            "seed": call.seed,
        }
        extra = guided_extra_body(call.guided)
        if extra:
            kwargs["extra_body"] = extra
        started = time.perf_counter()
        try:
            async with self._limit:
                if self._api == "chat":
                    messages = [{"role": "user", "content": call.prompt}]
                    if call.context:
                        messages.insert(0, {"role": "system", "content": call.context})
                    r = await client.chat.completions.create(messages=messages, **kwargs)
                    text = r.choices[0].message.content or ""
                else:
                    r = await client.completions.create(prompt=call.context + call.prompt, **kwargs)
                    text = r.choices[0].text
        except openai.APITimeoutError as exc:
            raise TeacherTimeout(f"teacher '{self.name}' timed out") from exc
        except openai.APIConnectionError as exc:
            raise TeacherUnavailable(f"teacher '{self.name}' is unreachable") from exc
        except openai.APIStatusError as exc:
            message = _upstream_message(exc)
            raise TeacherError(
                f"teacher '{self.name}' answered {exc.status_code}: {message}"
            ) from exc
        usage = r.usage
        return TeacherAnswer(
            text=text,
            finish_reason=r.choices[0].finish_reason or "stop",
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            latency_s=time.perf_counter() - started,
            model=self.name,
        )

    async def close(self) -> None:
        await self._client.close()


def _upstream_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        return str(body.get("message") or body.get("error") or body)[:300]
    return str(getattr(exc, "message", "") or exc)[:300]
