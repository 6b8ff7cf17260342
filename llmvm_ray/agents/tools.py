"""Calling a tool: LLM-VM's tool format, filled with the model's values, sent safely.

The model only ever supplies *values* for a tool's ``dynamic_params``. They never reach a
header, a URL's scheme, host or path structure: values go into the query string (GET) or
the JSON body (POST), URL-encoded by httpx, or into a ``{name}`` path placeholder encoded
with no safe characters, so ``../``, ``?`` or CR/LF in a value stay inert text. Hosts can be
restricted to an allowlist, redirects are not followed (they could leave the allowlist),
replies are read in chunks and refused past a byte limit, and every call has a timeout.
Failures raise ``ToolError`` with a short reason the agent puts in its trace.

Tool URLs come from the API's clients, so a call is a request the server makes on their
behalf, from inside the cluster. By default a tool host must resolve to public addresses
only: loopback, private, link-local (cloud metadata at 169.254.169.254), shared and reserved
ranges are refused, unless the operator trusts them (``allow_private_networks``, or the host
is listed in ``allowed_hosts``). The host is resolved once, checked, and the call connects to
that checked address (with the original Host header and TLS server name), so a second DNS
answer cannot point it elsewhere (DNS rebinding).
"""

from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
import json
import re
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from llmvm_ray.config import AgentsConfig
from llmvm_ray.errors import ConfigError
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


def host_allowed(host: str, allowed: list[str]) -> bool:
    """Whether ``host`` matches the allowlist (empty = any host; ``*.x`` wildcards)."""
    return not allowed or any(
        fnmatch.fnmatchcase(host.lower(), pattern.lower()) for pattern in allowed
    )


def is_public_address(address: str) -> bool:
    """Whether ``address`` is a globally routable unicast IP (IPv4-mapped IPv6 judged as the
    IPv4 address it carries)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone id is not part of it
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


@dataclass(frozen=True)
class Destination:
    """Where one call connects: the checked addresses of the URL's host, in resolver order,
    and what the server must still see of the original URL."""

    addresses: tuple[str, ...]
    host_header: str
    sni_hostname: str | None  # https only: the name the certificate is checked against

    def extensions(self) -> dict[str, Any]:
        return {"sni_hostname": self.sni_hostname} if self.sni_hostname else {}


async def resolve_destination(url: httpx.URL, config: AgentsConfig) -> Destination:
    """Check ``url``'s host against the policy (see the module docstring) and resolve it.

    Raises ``ToolError("host_not_allowed")`` for a host outside ``allowed_hosts`` or, unless
    trusted, one with any non-public address; ``ToolError("unreachable")`` when it does not
    resolve."""
    host = url.host
    if not host_allowed(host, config.allowed_hosts):
        raise ToolError("host_not_allowed", f"host {host} is not in allowed_hosts")
    name = url.raw_host.decode("ascii")  # IDNA-encoded: what DNS, Host and SNI take
    port = url.port or (443 if url.scheme == "https" else 80)
    lookup = asyncio.get_running_loop().getaddrinfo(name, port, type=socket.SOCK_STREAM)
    try:
        infos = await asyncio.wait_for(lookup, config.tool_timeout_s)
    except TimeoutError as exc:
        raise ToolError(
            "timeout", f"{host} did not resolve within {config.tool_timeout_s}s"
        ) from exc
    except (OSError, UnicodeError) as exc:
        raise ToolError("unreachable", f"cannot resolve {host}: {exc}") from exc
    # (An IPv6 zone id cannot go into a URL; a link-local address is private anyway.)
    addresses = tuple(dict.fromkeys(str(info[4][0]).split("%", 1)[0] for info in infos))
    if not addresses:
        raise ToolError("unreachable", f"{host} has no address")
    trusted = config.allow_private_networks or bool(config.allowed_hosts)
    private = [a for a in addresses if not is_public_address(a)]
    if private and not trusted:
        raise ToolError(
            "host_not_allowed",
            f"{host} resolves to {private[0]}, not a public address (to allow it, set "
            "agents.allow_private_networks or list the host in agents.allowed_hosts)",
        )
    literal = name in addresses  # an IP address in the URL: no name to send or check
    sni = name if url.scheme == "https" and not literal else None
    if ":" in name:
        name = f"[{name}]"
    return Destination(
        addresses=addresses,
        host_header=f"{name}:{url.port}" if url.port else name,
        sni_hostname=sni,
    )


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
        self._verify: ssl.SSLContext | bool = True
        if config.tool_ca_bundle:  # read now: a bad bundle fails the start, not every call
            try:
                self._verify = ssl.create_default_context(cafile=config.tool_ca_bundle)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    f"agents.tool_ca_bundle {config.tool_ca_bundle!r}: {exc}"
                ) from exc

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                follow_redirects=False,
                timeout=httpx.Timeout(self.config.tool_timeout_s),
                headers={"User-Agent": "llmvm-ray-agent"},
                trust_env=False,
                verify=self._verify,
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def call(self, tool: ToolSpec, values: dict[str, Any]) -> ToolReply:
        method, raw_url, kwargs = build_request(tool, values)
        url = httpx.URL(raw_url)
        started = time.perf_counter()
        destination = await resolve_destination(url, self.config)
        status, body = await self._send(method, url, destination, kwargs)
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

    async def _send(
        self, method: str, url: httpx.URL, destination: Destination, kwargs: dict[str, Any]
    ) -> tuple[int, bytes]:
        """Send to the destination's first address that accepts a connection (as connecting
        by name would); return the status and the body, read up to the byte limit."""
        limit = self.config.max_reply_bytes
        headers = {"Host": destination.host_header}
        failure: httpx.HTTPError | None = None
        for address in destination.addresses:
            try:
                async with self._http().stream(
                    method,
                    url.copy_with(host=address),
                    headers=headers,
                    extensions=destination.extensions(),
                    **kwargs,
                ) as response:
                    declared = response.headers.get("content-length")
                    if declared and declared.isdigit() and int(declared) > limit:
                        raise ToolError("reply_too_large", f"reply of {declared} bytes > {limit}")
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > limit:
                            raise ToolError("reply_too_large", f"reply longer than {limit} bytes")
                    return response.status_code, bytes(body)
            except httpx.TimeoutException as exc:
                raise ToolError(
                    "timeout", f"no reply within {self.config.tool_timeout_s}s"
                ) from exc
            except httpx.ConnectError as exc:
                failure = exc  # this address refused: try the next one
            except httpx.HTTPError as exc:
                raise ToolError("unreachable", f"{type(exc).__name__}: {exc}") from exc
        raise ToolError("unreachable", f"{type(failure).__name__}: {failure}")
