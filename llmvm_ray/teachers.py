"""Teachers: the models whose answers are recorded and distilled, built in one place.

A teacher is either remote — any OpenAI-compatible endpoint (``teacher.base_url``), reached
through the official ``openai`` SDK (``OpenAITeacher``) — or a model this app hosts itself,
reached through its Serve deployment (``HostedTeacher``). ``build_teacher`` picks one for the
optimizer's request path and for synthesis alike; they differ only in retry policy.

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

from llmvm_ray.config import Config
from llmvm_ray.engine.types import GenerationRequest, GuidedSpec, SamplingParams
from llmvm_ray.errors import LLMVMError
from llmvm_ray.protocol import new_id
from llmvm_ray.runtime import generate, model_handle

# A count above this is not a token count (a teacher's usage is checked before it is used).
_MAX_USAGE_TOKENS = 10_000_000


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
    params: SamplingParams
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
        p = call.params
        kwargs: dict[str, Any] = {
            "model": self.name,
            "max_tokens": p.max_tokens,
            "temperature": p.temperature,
            "top_p": p.top_p,
            "stop": list(p.stop) or None,
            "seed": p.seed,
        }
        extra = guided_extra_body(p.guided)
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
                else:
                    r = await client.completions.create(prompt=call.context + call.prompt, **kwargs)
        except openai.APITimeoutError as exc:
            raise TeacherTimeout(f"teacher '{self.name}' timed out") from exc
        except openai.APIConnectionError as exc:
            raise TeacherUnavailable(f"teacher '{self.name}' is unreachable") from exc
        except openai.APIStatusError as exc:
            message = f"teacher '{self.name}' answered {exc.status_code}: {_upstream_message(exc)}"
            if exc.status_code in (429, 503):  # overloaded: say when to come back
                raise TeacherUnavailable(message, retry_after_s=_retry_after(exc)) from exc
            raise TeacherError(message) from exc
        text, finish_reason, prompt_tokens, completion_tokens = self._checked(r)
        return TeacherAnswer(
            text=text,
            finish_reason=finish_reason,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            latency_s=time.perf_counter() - started,
            model=self.name,
        )

    def _checked(self, r: Any) -> tuple[str, str, int, int]:
        """Text, finish reason and token counts of an answer, or a ``TeacherError`` (502)
        saying what is wrong with it: a malformed answer is never recorded. The SDK builds
        its objects without validating them, so an endpoint's null text or missing choices
        reach here as they came."""
        choices = getattr(r, "choices", None)
        if not isinstance(choices, list) or not choices:
            raise TeacherError(f"teacher '{self.name}' answered without choices")
        choice = choices[0]
        holder = getattr(choice, "message", None) if self._api == "chat" else choice
        text = getattr(holder, "content" if self._api == "chat" else "text", None)
        if not isinstance(text, str):
            raise TeacherError(f"teacher '{self.name}' answered no text (got {text!r:.40})")
        finish_reason = getattr(choice, "finish_reason", None) or "stop"
        if finish_reason not in ("stop", "length"):
            raise TeacherError(
                f"teacher '{self.name}' answered finish_reason {finish_reason!r:.40}"
            )
        usage = getattr(r, "usage", None)
        counts = [getattr(usage, k, 0) for k in ("prompt_tokens", "completion_tokens")]
        if usage is None:
            counts = [0, 0]
        if not all(type(n) is int and 0 <= n <= _MAX_USAGE_TOKENS for n in counts):
            raise TeacherError(f"teacher '{self.name}' answered usage {counts!r:.80}")
        return text, finish_reason, counts[0], counts[1]

    async def close(self) -> None:
        await self._client.close()


class HostedTeacher:
    """A teacher model hosted by this Serve app, behind the same interface as a remote one."""

    def __init__(self, name: str, handle: Any) -> None:
        self.name = name
        self._handle = handle

    async def complete(self, call: TeacherCall) -> TeacherAnswer:
        started = time.perf_counter()
        request = GenerationRequest(new_id("teacher"), call.context + call.prompt, call.params)
        try:
            result = await generate(self._handle, request)
        except LLMVMError:
            raise
        except Exception as exc:
            raise TeacherError(f"teacher '{self.name}' failed: {type(exc).__name__}") from exc
        choice = result.choices[0]
        return TeacherAnswer(
            text=choice.text,
            finish_reason=choice.finish_reason,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=choice.completion_tokens,
            latency_s=time.perf_counter() - started,
            model=self.name,
        )


def build_teacher(
    config: Config, name: str | None = None, *, synthesis: bool = False, handle: Any = None
) -> Teacher:
    """The teacher ``name`` (default ``teacher.model``): remote when ``teacher.base_url`` is
    set, else the app's own replica (``handle``, or looked up on the cluster).

    For ``synthesis`` the SDK's own retries are off: a synthesis unit retries itself
    (capped, with backoff) so that every 429 and timeout is counted, under the synthesis
    run's timeout and in-flight bound. The request path keeps the SDK's retries.
    """
    t = config.teacher
    name = name or t.model
    if not t.base_url:
        return HostedTeacher(name, handle if handle is not None else model_handle(config, name))
    s = config.synthesis
    return OpenAITeacher(
        base_url=t.base_url,
        model=name,
        api_key=t.api_key.get_secret_value() if t.api_key else None,
        api=t.api,
        timeout_s=s.request_timeout_s if synthesis else t.timeout_s,
        max_retries=0 if synthesis else t.max_retries,
        max_concurrency=s.max_in_flight if synthesis else t.max_concurrency,
    )


def _retry_after(exc: Any) -> float:
    """The upstream's ``Retry-After`` in seconds (a number of seconds; 1 if absent)."""
    value = exc.response.headers.get("retry-after", "") if exc.response is not None else ""
    try:
        return min(max(float(value), 0.0), 3600.0)
    except ValueError:
        return 1.0


def _upstream_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        return str(body.get("message") or body.get("error") or body)[:300]
    return str(getattr(exc, "message", "") or exc)[:300]
