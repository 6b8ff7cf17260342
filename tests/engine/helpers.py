"""Small helpers shared by the engine tests."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from llmvm_ray.config import ModelConfig
from llmvm_ray.engine import (
    AdapterRef,
    EngineClient,
    GenerationRequest,
    GenerationResult,
    SamplingParams,
    StreamDelta,
)
from llmvm_ray.engine.inbox import RequestInbox
from llmvm_ray.errors import InvalidRequestError


class ByteTokenizer:
    """Token i < 256 is byte i; decoding replaces incomplete UTF-8 like byte-level BPE."""

    def decode(self, ids: list[int], **_: object) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


def model_config(path: Path, **overrides: Any) -> ModelConfig:
    """The engine tests' model config: CPU unless ``LLMVM_TEST_DEVICE`` names another device
    (``cuda`` for the GPU check, with ``LLMVM_TEST_DTYPE`` for its dtype, default ``auto``)."""
    overrides.setdefault("device", os.environ.get("LLMVM_TEST_DEVICE", "cpu"))
    overrides.setdefault("dtype", os.environ.get("LLMVM_TEST_DTYPE", "auto"))
    return ModelConfig(name="tiny", model_uri=str(path), **overrides)


def req(
    request_id: str,
    prompt: str = "Hello world",
    adapter: AdapterRef | None = None,
    **params: Any,
) -> GenerationRequest:
    """A GenerationRequest with the given sampling params."""
    return GenerationRequest(request_id, prompt, SamplingParams(**params), adapter)


def texts(results: list) -> dict[str, list[str]]:
    """request_id -> choice texts."""
    return {r.request_id: [c.text for c in r.choices] for r in results}


def joined_deltas(deltas: list[StreamDelta]) -> dict[tuple[str, int], str]:
    """(request_id, choice index) -> concatenated streamed text."""
    out: dict[tuple[str, int], str] = defaultdict(str)
    for delta in deltas:
        out[(delta.request_id, delta.index)] += delta.text
    return dict(out)


def long_sample(engine: Any, max_tokens: int = 24, min_chars: int = 16) -> tuple[int, str]:
    """A (seed, text) whose sampled text runs to max_tokens with at least ``min_chars``
    characters (a random tiny model sometimes samples EOS at once)."""
    for seed in range(50):
        choice = engine.generate([req("probe", seed=seed, max_tokens=max_tokens)])[0].choices[0]
        text = choice.text
        long_enough = choice.finish_reason == "length" and len(text) >= min_chars
        if long_enough and "\ufffd" not in text[:min_chars]:
            return seed, text
    raise AssertionError("no seed gave a long sample")


class JoinRun:
    """One ``generate`` call with an inbox, in a thread, plus what came back.

    ``join_at`` maps a step number (counted in deltas of the first request; all that are
    left go in with its last delta) to the requests put into the inbox at that point, so
    joiners arrive while the batch is decoding. The
    inbox closes once every request handed over has a result or was rejected.
    """

    def __init__(
        self,
        engine: Any,
        first: list[GenerationRequest],
        join_at: dict[int, list[GenerationRequest]],
        max_rows: int = 16,
    ) -> None:
        self.results: dict[str, GenerationResult] = {}
        self.rejected: dict[str, Exception] = {}
        self.deltas = 0
        self.joined_mid_run = 0  # joiners put in while the first request still decoded
        self._owed = len(first) + sum(len(v) for v in join_at.values())
        self._join_at = join_at
        self._first_id = first[0].request_id
        self._lock = threading.Lock()
        self.inbox = RequestInbox(max_rows, self._reject)
        self.returned: list[GenerationResult] = []
        self.thread = threading.Thread(
            target=lambda: self.returned.extend(
                engine.generate(first, self._delta, None, self._result, self.inbox)
            )
        )

    def run(self, timeout: float = 60) -> JoinRun:
        self.thread.start()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "generate did not end"
        return self

    def _delta(self, delta) -> None:
        if delta.request_id == self._first_id:
            self.deltas += 1
            due = [k for k in self._join_at if k <= self.deltas or delta.finish_reason]
            for step in sorted(due):
                for request in self._join_at.pop(step):
                    assert self.inbox.put(request)
                    self.joined_mid_run += delta.finish_reason is None

    def _settled(self) -> None:
        with self._lock:
            self._owed -= 1
            if self._owed == 0:
                self.inbox.close()

    def _result(self, result: GenerationResult) -> None:
        self.results[result.request_id] = result
        self._settled()

    def _reject(self, request_id: str, error: Exception) -> None:
        self.rejected[request_id] = error
        self._settled()


def serve_through(client: EngineClient, engine: Any) -> dict[str, Any]:
    """Serve a chat request, a streamed one and an invalid one through ``client``, check each
    against ``engine`` alone, and return the client's ``info()``."""
    messages = [{"role": "user", "content": "hi"}]
    chat, streamed, bad = req("chat", seed=1), req("streamed", seed=2), req("bad", n=0)

    async def main() -> tuple[GenerationResult, list[Any], dict[str, int], list[str]]:
        result = await client.generate(chat, messages)
        events = [event async for event in client.stream(streamed)]
        with pytest.raises(InvalidRequestError) as error:  # before it meets any other
            await client.generate(bad)
        assert error.value.param == "n"
        return result, events, await client.stats(), await client.loaded_adapters()

    result, events, stats, adapters = asyncio.run(main())
    rendered = dataclasses.replace(chat, prompt=engine.render_chat(messages))
    assert texts([result]) == texts(engine.generate([rendered]))
    *deltas, final = events
    assert texts([final]) == texts(engine.generate([streamed]))
    assert joined_deltas(deltas) == {("streamed", 0): final.choices[0].text}
    assert set(stats) == {"steps", "row_steps", "prefills", "prefill_rows"}
    assert adapters == []
    client.check()
    return client.info()
