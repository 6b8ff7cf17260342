"""Tool specs and HTTP tool calls: validation, safe substitution, allowlist, and every
failure (unreachable, timeout, huge, non-JSON, redirect) against real loopback servers."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest
from pydantic import ValidationError

from llmvm_ray.agents.tools import ToolCaller, ToolError, build_request, parse_tools
from llmvm_ray.config import AgentsConfig
from llmvm_ray.protocol import ToolSpec


def _tool(url: str, method: str = "GET", **kw) -> ToolSpec:
    return ToolSpec(
        description="t", url=url, method=method, dynamic_params={"q": "the query"}, **kw
    )


def _call(tool: ToolSpec, values: dict, **config) -> object:
    caller = ToolCaller(AgentsConfig(**config))

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
    assert _call(tool, {"q": "x"}, allowed_hosts=["127.0.0.*"]).status == 200


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
