"""Fixtures of the agent tests: the real knowledge-tool server on loopback, and a small
misbehaving HTTP server (slow, huge, non-JSON, redirecting, echoing) for the failure paths."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest


@pytest.fixture(scope="session")
def kb():
    from llmvm_ray.agents.bench.knowledge import KnowledgeBase

    return KnowledgeBase.load()


@pytest.fixture(scope="session")
def knowledge(kb):
    from llmvm_ray.agents.bench.knowledge import KnowledgeServer

    with KnowledgeServer(kb) as server:
        yield server


class _Bad(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        self._route()

    def do_POST(self):  # noqa: N802
        self._route()

    def _route(self):
        parts = urlsplit(self.path)
        if parts.path == "/slow":
            time.sleep(5)
            return self._send(200, b'{"result": "late"}')
        if parts.path == "/huge":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()  # no Content-Length: the limit must hold while streaming
            try:
                for _ in range(200):
                    self.wfile.write(b"x" * 1024)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client stopped reading at its limit: expected
            return None
        if parts.path == "/text":
            return self._send(200, b"<html>not json</html>", "text/html")
        if parts.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "http://example.com/")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        echo = {
            "path": parts.path,
            "query": parse_qs(parts.query),
            "raw_query": parts.query,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body,
        }
        return self._send(200, json.dumps(echo).encode())

    def _send(self, status, data, ctype="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        return


@pytest.fixture(scope="session")
def bad_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Bad)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
