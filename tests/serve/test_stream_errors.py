"""A stream that fails after its headers went out ends with an OpenAI-style error event and
the terminator, and is counted with the failure's status (control flow: a scripted replica
stream that dies mid-way, through the real routes and service)."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient
from ray.exceptions import RayActorError

from llmvm_ray.config import Config
from llmvm_ray.engine.types import StreamDelta
from llmvm_ray.serve.routes import create_app
from llmvm_ray.serve.service import OpenAIService


class _DyingStream:
    """A replica stream: two deltas, then its replica dies."""

    def __init__(self, request_id: str) -> None:
        self.events = [StreamDelta(request_id, 0, "Hel"), StreamDelta(request_id, 0, "lo")]

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self.events:
            return self.events.pop(0)
        raise RayActorError()


class _Method:
    def remote(self, request, *_):
        return _DyingStream(request.request_id)


class _Replica:
    generate_stream = _Method()

    def options(self, **_):
        return self


def test_a_stream_that_dies_ends_with_an_error_event_and_done():
    config = Config.model_validate({"models": [{"name": "tiny", "model_uri": "x"}]})
    service = OpenAIService(config, {"tiny": _Replica()})
    counted = []
    service.metrics.request = lambda endpoint, model, status: counted.append(status)
    with TestClient(create_app(service)) as client:
        r = client.post(
            "/v1/completions",
            json={"model": "tiny", "prompt": "hi", "stream": True, "max_tokens": 5},
        )
    assert r.status_code == 200  # the headers went out before the replica died
    events = [line.removeprefix("data: ") for line in r.text.splitlines() if line]
    assert events[-1] == "[DONE]"
    texts = [json.loads(e)["choices"][0]["text"] for e in events[:-2]]
    assert "".join(texts) == "Hello"
    error = json.loads(events[-2])["error"]
    assert error["type"] == "unavailable" and "replica" in error["message"]
    assert counted == [503]
