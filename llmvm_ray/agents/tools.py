"""Calling a tool: LLM-VM's tool format, filled with the model's values, sent safely.

The model only ever supplies *values* for a tool's ``dynamic_params``. They never reach a
header, a URL's scheme, host or path structure: values go into the query string (GET) or
the JSON body (POST), URL-encoded by httpx, or into a ``{name}`` path placeholder encoded
with no safe characters, so ``../``, ``?`` or CR/LF in a value stay inert text. Hosts can be
restricted to an allowlist, redirects are not followed (they could leave the allowlist),
replies are read in chunks and refused past a byte limit, and every call has a timeout.
Failures raise ``ToolError`` with a short reason the agent puts in its trace.
"""

from __future__ import annotations

import fnmatch
import json
import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from llmvm_ray.config import AgentsConfig
from llmvm_ray.protocol import ToolSpec

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.-]*)\}")
# Scalars only: a model-made nested object has no place in a query string.
_Scalar = str | int | float | bool


class ToolError(Exception):
    """A tool call that did not give a usable reply; ``reason`` is a short code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class ToolReply:
    status: int
    data: Any  # the parsed JSON (or the text, when JSON is not required)
    text: str
    latency_s: float


def parse_tools(tools: list[dict[str, Any] | ToolSpec]) -> list[ToolSpec]:
    """Validate LLM-VM tool objects (raises pydantic ``ValidationError`` naming the field)."""
    return [t if isinstance(t, ToolSpec) else ToolSpec.model_validate(t) for t in tools]


def host_allowed(url: str, allowed: list[str]) -> bool:
    """Whether ``url``'s host matches the allowlist (empty = any host; ``*.x`` wildcards)."""
    if not allowed:
        return True
    host = (urlsplit(url).hostname or "").lower()
    return any(fnmatch.fnmatchcase(host, pattern.lower()) for pattern in allowed)


def clean_values(tool: ToolSpec, values: dict[str, Any]) -> dict[str, _Scalar]:
    """The model's values for exactly the tool's dynamic params, as scalars.

    Extra keys are dropped (the model cannot add or override static params); a missing
    key or a non-scalar value is a ``ToolError("bad_input")``.
    """
    out: dict[str, _Scalar] = {}
    for name in tool.dynamic_params:
        if name not in values:
            raise ToolError("bad_input", f"missing value for '{name}'")
        value = values[name]
        if isinstance(value, _Scalar) and value is not None:
            out[name] = value
        else:
            raise ToolError("bad_input", f"value for '{name}' must be a string or number")
    return out


def build_request(tool: ToolSpec, values: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """(method, url, httpx kwargs) for one call; path placeholders are encoded safely."""
    dynamic = clean_values(tool, values)
    params = {**tool.static_params, **dynamic}
    used: set[str] = set()

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in params:
            return match.group(0)
        used.add(name)
        return quote(str(params[name]), safe="")

    # Placeholders may only sit in the path: the scheme and host are fixed by the spec.
    parts = urlsplit(tool.url)
    base = f"{parts.scheme}://{parts.netloc}"
    url = base + _PLACEHOLDER.sub(substitute, parts.path)
    if parts.query:
        url += "?" + parts.query
    rest = {k: v for k, v in params.items() if k not in used}
    if tool.method == "GET":
        return "GET", url, {"params": {k: _text(v) for k, v in rest.items()}}
    return "POST", url, {"json": rest}


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else json.dumps(value)


class ToolCaller:
    """Sends tool calls with one shared async HTTP client (created per event loop user)."""

    def __init__(self, config: AgentsConfig) -> None:
        self.config = config
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                follow_redirects=False,
                timeout=httpx.Timeout(self.config.tool_timeout_s),
                headers={"User-Agent": "llmvm-ray-agent"},
                trust_env=False,
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def call(self, tool: ToolSpec, values: dict[str, Any]) -> ToolReply:
        if not host_allowed(tool.url, self.config.allowed_hosts):
            raise ToolError("host_not_allowed", f"host of {tool.url} is not in allowed_hosts")
        method, url, kwargs = build_request(tool, values)
        started = time.perf_counter()
        limit = self.config.max_reply_bytes
        try:
            async with self._http().stream(method, url, **kwargs) as response:
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > limit:
                    raise ToolError("reply_too_large", f"reply of {declared} bytes > {limit}")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > limit:
                        raise ToolError("reply_too_large", f"reply longer than {limit} bytes")
                status = response.status_code
        except httpx.TimeoutException as exc:
            raise ToolError("timeout", f"no reply within {self.config.tool_timeout_s}s") from exc
        except httpx.HTTPError as exc:
            raise ToolError("unreachable", f"{type(exc).__name__}: {exc}") from exc
        latency = time.perf_counter() - started
        text = body.decode("utf-8", errors="replace")
        if not 200 <= status < 300:
            raise ToolError("http_error", f"status {status}: {text[:200]}")
        try:
            data: Any = json.loads(text)
        except ValueError:
            if self.config.require_json:
                raise ToolError("not_json", f"reply is not JSON: {text[:80]!r}") from None
            data = text
        return ToolReply(status=status, data=data, text=text, latency_s=latency)
