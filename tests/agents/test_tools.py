"""Tool specs and HTTP tool calls: validation, safe substitution, allowlist, the refusal of
non-public addresses, calls pinned to the checked address (HTTP and HTTPS), and every
failure (unreachable, timeout, huge, non-JSON, redirect) against real loopback servers."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import threading
import time
from http.server import ThreadingHTTPServer

import pytest
from pydantic import ValidationError

from llmvm_ray.agents.tools import (
    ToolCaller,
    ToolError,
    build_request,
    is_public_address,
    parse_tools,
)
from llmvm_ray.config import AgentsConfig
from llmvm_ray.errors import ConfigError
from llmvm_ray.protocol import ToolSpec


def _tool(url: str, method: str = "GET", **kw) -> ToolSpec:
    return ToolSpec(
        description="t", url=url, method=method, dynamic_params={"q": "the query"}, **kw
    )


def _call(tool: ToolSpec, values: dict, **config) -> object:
    """One call; the test servers listen on loopback, so private addresses are allowed
    unless ``config`` says otherwise."""
    caller = ToolCaller(AgentsConfig(**{"allow_private_networks": True, **config}))

    async def go():
        try:
            return await caller.call(tool, values)
        finally:
            await caller.aclose()

    return asyncio.run(go())


@pytest.mark.parametrize(
    "spec",
    [
        {"description": "x", "url": "ftp://example.com/x"},
        {"description": "x", "url": "javascript:alert(1)"},
        {"description": "x", "url": "http:///nohost"},
        {"description": "x", "url": "http://user:pw@example.com/"},
        {"description": "x", "url": "http://example.com/a b"},
        {"description": "", "url": "http://example.com/"},
        {"description": "x", "url": "http://example.com/", "method": "DELETE"},
        {"description": "x", "url": "http://e.com/", "dynamic_params": {"a b": "bad name"}},
        {
            "description": "x",
            "url": "http://e.com/",
            "static_params": {"key": "secret"},
            "dynamic_params": {"key": "model may not override"},
        },
        {"description": "x", "url": "http://e.com/", "extra": 1},
    ],
)
def test_invalid_tool_specs_are_rejected(spec):
    with pytest.raises(ValidationError):
        parse_tools([spec])


def test_values_are_encoded_never_injected(bad_server):
    nasty = "a&b=c\r\nX-Injected: 1 ../../etc?#"
    tool = ToolSpec(
        description="echo",
        url=f"{bad_server}/echo/{{q}}",
        static_params={"key": "k1"},
        dynamic_params={"q": "query"},
    )
    method, url, kwargs = build_request(tool, {"q": nasty, "key": "override", "extra": "x"})
    assert method == "GET" and "\r" not in url and "\n" not in url
    reply = _call(tool, {"q": nasty, "key": "override"})
    echo = reply.data
    # The value is one encoded path segment; the static param kept its value.
    assert echo["path"] == "/echo/" + __import__("urllib.parse").parse.quote(nasty, safe="")
    assert echo["query"] == {"key": ["k1"]}
    assert "x-injected" not in echo["headers"]

    query_tool = _tool(f"{bad_server}/echo")
    echo = _call(query_tool, {"q": nasty}).data
    assert echo["query"] == {"q": [nasty]}
    assert "x-injected" not in echo["headers"]


def test_post_sends_json_body(bad_server):
    tool = _tool(f"{bad_server}/echo", method="POST", static_params={"n": 3})
    echo = _call(tool, {"q": "hi"}).data
    assert json.loads(echo["body"]) == {"n": 3, "q": "hi"}


def test_missing_or_nested_values_are_bad_input(bad_server):
    tool = _tool(f"{bad_server}/echo")
    for values in ({}, {"q": {"nested": 1}}, {"q": None}):
        with pytest.raises(ToolError) as info:
            _call(tool, values)
        assert info.value.reason == "bad_input"


def test_host_allowlist(bad_server):
    tool = _tool(f"{bad_server}/echo")
    with pytest.raises(ToolError) as info:
        _call(tool, {"q": "x"}, allowed_hosts=["*.example.com"])
    assert info.value.reason == "host_not_allowed"
    # A listed host is trusted wherever it resolves, private networks or not.
    listed = {"allowed_hosts": ["127.0.0.*"], "allow_private_networks": False}
    assert _call(tool, {"q": "x"}, **listed).status == 200


def test_public_addresses():
    for address in ("8.8.8.8", "1.1.1.1", "2001:4860:4860::8888", "::ffff:8.8.8.8"):
        assert is_public_address(address), address
    private = (
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # carrier-grade NAT
        "0.0.0.0",
        "224.0.0.1",
        "::1",
        "fe80::1%eth0",
        "fd00::1",
        "::ffff:127.0.0.1",
        "::",
    )
    for address in private:
        assert not is_public_address(address), address


def test_non_public_hosts_are_refused_by_default(bad_server):
    """Tool URLs come from API clients: by default the server calls public addresses only,
    and refuses the others before connecting (the echo server on loopback is never hit)."""
    port = bad_server.rsplit(":", 1)[1]
    urls = [
        f"{bad_server}/echo",
        f"http://localhost:{port}/echo",  # a name that resolves to loopback
        f"http://[::1]:{port}/echo",
        f"http://[::ffff:127.0.0.1]:{port}/echo",
        f"http://0.0.0.0:{port}/echo",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/x",
        "http://192.168.0.1/x",
    ]
    for url in urls:
        started = time.perf_counter()
        with pytest.raises(ToolError) as info:
            _call(_tool(url), {"q": "x"}, allow_private_networks=False)
        assert info.value.reason == "host_not_allowed", url
        assert "allow_private_networks" in info.value.message
        assert time.perf_counter() - started < 5, url  # refused, not a connection timeout


def test_unresolvable_host_is_unreachable():
    with pytest.raises(ToolError) as info:
        _call(_tool("http://no-such-host.invalid/x"), {"q": "x"}, tool_timeout_s=3)
    assert info.value.reason in {"unreachable", "timeout"}


def test_calls_connect_to_the_checked_address_with_the_original_host(bad_server):
    """The host is resolved once and the call goes to that address: the server still sees
    the name in the Host header. (``localhost`` may resolve to ::1 first while the server
    listens on 127.0.0.1 only: the next address is tried, as connecting by name would.)"""
    port = bad_server.rsplit(":", 1)[1]
    echo = _call(_tool(f"http://localhost:{port}/echo"), {"q": "x"}).data
    assert echo["headers"]["host"] == f"localhost:{port}"
    assert echo["query"] == {"q": ["x"]}


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    """An HTTPS echo server on loopback with a certificate for ``localhost`` from a
    throwaway CA; records the TLS server names clients asked for."""
    import trustme

    from tests.agents.conftest import _Bad

    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)
    names: list[str | None] = []
    context.sni_callback = lambda sock, name, ctx: names.append(name)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Bad)
    server.daemon_threads = True
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    bundle = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    yield f"https://localhost:{server.server_address[1]}", str(bundle), names
    server.shutdown()
    server.server_close()


def test_https_calls_check_the_certificate_against_the_host_name(tls_server, tmp_path):
    url, bundle, names = tls_server
    reply = _call(_tool(f"{url}/echo"), {"q": "x"}, tool_ca_bundle=bundle)
    assert reply.status == 200
    assert reply.data["headers"]["host"] == url.removeprefix("https://")
    assert names[-1] == "localhost"  # the name, not the pinned address, went out as SNI
    # Without the CA the certificate is not trusted: the call fails, it is not sent.
    with pytest.raises(ToolError) as info:
        _call(_tool(f"{url}/echo"), {"q": "x"})
    assert info.value.reason == "unreachable"
    # A bundle that cannot be read fails the caller's start, naming the option.
    for bad in (tmp_path / "missing.pem", tmp_path / "junk.pem"):
        if bad.name == "junk.pem":
            bad.write_text("not a certificate")
        with pytest.raises(ConfigError, match="tool_ca_bundle"):
            ToolCaller(AgentsConfig(tool_ca_bundle=str(bad)))


def test_failures_are_typed(bad_server):
    cases = {
        "/slow": ("timeout", {"tool_timeout_s": 0.3}),
        "/huge": ("reply_too_large", {"max_reply_bytes": 10_000}),
        "/text": ("not_json", {}),
        "/redirect": ("http_error", {}),
    }
    for path, (reason, config) in cases.items():
        with pytest.raises(ToolError) as info:
            _call(_tool(bad_server + path), {"q": "x"}, **config)
        assert info.value.reason == reason, path
    # Non-JSON is accepted as text when the config says so.
    assert _call(_tool(bad_server + "/text"), {"q": "x"}, require_json=False).data.startswith(
        "<html>"
    )


def test_unreachable_tool():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    with pytest.raises(ToolError) as info:
        _call(_tool(f"http://127.0.0.1:{port}/x"), {"q": "x"})
    assert info.value.reason == "unreachable"


def test_knowledge_server_lookups(knowledge):
    tools = {t.url.rsplit("/", 1)[1]: t for t in knowledge.tools()}
    assert _call(tools["birth_country"], {"person": "Rumi"}).data == {"result": "Afghanistan"}
    assert _call(tools["capital"], {"country": "afghanistan"}).data == {"result": "Kabul"}
    with pytest.raises(ToolError) as info:
        _call(tools["capital"], {"country": "Atlantis"})
    assert info.value.reason == "http_error"
