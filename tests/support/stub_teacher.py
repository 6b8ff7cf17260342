"""A real loopback HTTP server that plays a badly behaved remote OpenAI-compatible teacher.

Tests and ``benchmarks/synthesis.py`` use it as an external service (not one of our
components). Each POST to ``/v1/completions`` or ``/v1/chat/completions`` takes the next
behaviour from a script (repeating the last one):

- ``good``: a JSON array of distinct examples; ``same``: always the same examples;
- ``fenced``: ``good`` in a code fence with prose; ``delimited``: the delimiter encoding;
- ``jsonl``: LLM-VM's expected shape, one ``{"prompt", "response"}`` object per line;
- ``truncated``: JSON cut mid-object, finish_reason ``length``; ``garbage``; ``empty``;
- ``429`` (with Retry-After: 0), ``503`` (with Retry-After: 7), ``500``, and ``slow``
  (answers after ``slow_s``);
- malformed 200s: ``null_text``, ``no_choices``, ``bad_finish``, ``bad_usage``.

It records every request body and the most requests it ever had in flight.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MALFORMED = ("null_text", "no_choices", "bad_finish", "bad_usage")


class StubTeacher:
    def __init__(
        self, script: list[str], per_answer: int = 2, slow_s: float = 2.0, latency_s: float = 0.0
    ) -> None:
        self.script = list(script)
        self.latency_s = latency_s  # every answer takes this long (a remote API's latency)
        self.per_answer = per_answer
        self.slow_s = slow_s
        self.requests: list[dict[str, Any]] = []
        self.in_flight = 0
        self.peak_in_flight = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> StubTeacher:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _next(self, body: dict[str, Any]) -> tuple[str, int]:
        with self._lock:
            i = len(self.requests)
            self.requests.append(body)
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        return self.script[min(i, len(self.script) - 1)], i

    def _done(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def examples(self, i: int) -> list[dict[str, str]]:
        """Distinct examples for answer ``i`` (hex words: no two are near-duplicates)."""
        out = []
        for j in range(self.per_answer):
            h = hashlib.sha256(f"{i}.{j}".encode()).hexdigest()
            prompt = f"{h[:10]} {h[10:20]} plus one?"
            out.append({"prompt": prompt, "completion": f" {i * 7 + j + 1}"})
        return out

    def text(self, behaviour: str, i: int) -> tuple[str, str]:
        good = json.dumps(self.examples(i))
        if behaviour == "good":
            return good, "stop"
        if behaviour == "same":  # the teacher repeats itself: duplicates, nothing new
            return json.dumps(self.examples(0)), "stop"
        if behaviour == "jsonl":
            return "\n".join(
                json.dumps({"prompt": e["prompt"], "response": e["completion"]})
                for e in self.examples(i)
            ), "stop"
        if behaviour == "fenced":
            return f"Sure, here they are:\n```json\n{good}\n```\nAnything else?", "stop"
        if behaviour == "delimited":
            return "".join(
                f"### PROMPT\n{e['prompt']}\n### COMPLETION\n{e['completion']}\n<END>\n"
                for e in self.examples(i)
            ), "stop"
        if behaviour == "truncated":
            return good[: len(good) - 15], "length"
        if behaviour == "garbage":
            return "I'm sorry, as an AI I can't do that }{ ][", "stop"
        if behaviour == "empty":
            return "", "stop"
        raise ValueError(behaviour)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, payload: dict[str, Any], headers=()) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in headers:
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout): fine

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                behaviour, i = stub._next(body)
                try:
                    if stub.latency_s:
                        time.sleep(stub.latency_s)
                    if behaviour == "429":
                        self._send(
                            429,
                            {"error": {"message": "rate limited", "type": "rate_limit"}},
                            [("Retry-After", "0")],
                        )
                        return
                    if behaviour == "500":
                        self._send(500, {"error": {"message": "boom", "type": "server"}})
                        return
                    if behaviour == "503":
                        self._send(
                            503,
                            {"error": {"message": "overloaded", "type": "server"}},
                            [("Retry-After", "7")],
                        )
                        return
                    if behaviour == "slow":
                        time.sleep(stub.slow_s)
                        behaviour = "good"
                    malformed = behaviour if behaviour in MALFORMED else None
                    text, finish = stub.text("good" if malformed else behaviour, i)
                    chat = self.path.endswith("/chat/completions")
                    choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
                    content = None if malformed == "null_text" else text
                    if malformed == "bad_finish":
                        choice["finish_reason"] = "tool_calls"
                    if chat:
                        choice["message"] = {"role": "assistant", "content": content}
                    else:
                        choice.update(text=content, logprobs=None)
                    usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
                    if malformed == "bad_usage":
                        usage["completion_tokens"] = -3
                    self._send(
                        200,
                        {
                            "id": f"stub-{i}",
                            "object": "chat.completion" if chat else "text_completion",
                            "created": 0,
                            "model": body.get("model", "stub"),
                            "choices": [] if malformed == "no_choices" else [choice],
                            "usage": usage,
                        },
                    )
                finally:
                    stub._done()

        return Handler
