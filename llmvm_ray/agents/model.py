"""The one interface agents call a model through, and its implementations.

An agent never talks to a model any other way: every decision step is a ``StepCall`` with
a *stable* ``context`` (the step's instructions, tools and examples: the task) and a
*dynamic* ``prompt``. Through the optimizing path (``ServiceModel`` → ``/v1/complete``) each
distinct context is its own task, so the teacher's answers are recorded and each step can be
distilled into a student, exactly like any other LLM-VM task.

- ``ServiceModel``: production. ``POST /v1/complete`` of an llmvm service (the optimizer).
- ``OpenAIModel``: any OpenAI-compatible ``/v1/completions`` endpoint, for evaluating an agent
  against a plain LLM (context + prompt sent as one prompt; nothing is distilled).
- ``LocalStepModel``: a tiny model trained on the decision steps (``agents/bench`` trains
  and evaluates one), concurrent calls batched into one ``generate``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import httpx
from pydantic import BaseModel, ConfigDict, Field


@dataclass(frozen=True)
class StepCall:
    step: str  # which decision step ("split", "pick", ...): for traces and step models
    context: str  # the stable part: the task
    prompt: str  # the dynamic part
    max_tokens: int = 96
    temperature: float = 0.0
    stop: tuple[str, ...] = ("\n",)
    seed: int | None = None


@dataclass
class ModelReply:
    text: str
    served_by: str = "unknown"  # teacher | student | base | adapter | local
    task_id: str | None = None
    model: str | None = None
    latency_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


class ModelCallError(Exception):
    """The model could not be reached or answered with an error."""


class AgentModel(Protocol):
    async def complete(self, call: StepCall) -> ModelReply: ...

    async def aclose(self) -> None: ...


class _HTTPModel:
    """One lazily opened ``httpx.AsyncClient`` per backend (opened inside the event loop
    that uses it, never at construction)."""

    def __init__(self, base_url: str, api_key: str | None, timeout_s: float) -> None:
        self._base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout_s = timeout_s
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            self._client = httpx.AsyncClient(
                base_url=self._base_url, headers=headers, timeout=self.timeout_s, trust_env=False
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


class ServiceModel(_HTTPModel):
    """``POST {url}/v1/complete``: the optimizing completion of an llmvm service."""

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        big_model: str | None = None,
        small_model: str | None = None,
        finetune: bool = True,
        timeout_s: float = 60.0,
    ) -> None:
        super().__init__(url, api_key, timeout_s)
        self.url = url.rstrip("/")
        self.big_model = big_model
        self.small_model = small_model
        self.finetune = finetune

    async def complete(self, call: StepCall) -> ModelReply:
        body: dict[str, Any] = {
            "prompt": call.prompt,
            "context": call.context,
            "temperature": call.temperature,
            "max_tokens": call.max_tokens,
            "finetune": self.finetune,
        }
        if call.stop:
            body["stoptoken"] = list(call.stop)[:4]
        if call.seed is not None:
            body["seed"] = call.seed
        if self.big_model:
            body["big_model"] = self.big_model
        if self.small_model:
            body["small_model"] = self.small_model
        started = time.perf_counter()
        try:
            response = await self._http().post("/v1/complete", json=body)
        except httpx.HTTPError as exc:
            raise ModelCallError(f"model endpoint unreachable: {type(exc).__name__}") from exc
        try:
            data = response.json()
        except ValueError:
            raise ModelCallError(
                f"model endpoint answered {response.status_code}, not JSON"
            ) from None
        if response.status_code != 200:
            message = (data.get("error") or {}).get("message") if isinstance(data, dict) else None
            raise ModelCallError(f"model endpoint answered {response.status_code}: {message}")
        meta = data.get("llmvm") or {}
        return ModelReply(
            text=data.get("completion", ""),
            served_by=meta.get("served_by", "unknown"),
            task_id=meta.get("task_id"),
            model=meta.get("base_model"),
            latency_s=time.perf_counter() - started,
        )


class OpenAIModel(_HTTPModel):
    """Any OpenAI-compatible completions endpoint (context and prompt sent together)."""

    def __init__(
        self, base_url: str, model: str, *, api_key: str | None = None, timeout_s: float = 60.0
    ) -> None:
        super().__init__(base_url, api_key, timeout_s)
        self.base_url = base_url.rstrip("/")
        self.model = model

    async def complete(self, call: StepCall) -> ModelReply:
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": call.context + call.prompt,
            "max_tokens": call.max_tokens,
            "temperature": call.temperature,
        }
        if call.stop:
            body["stop"] = list(call.stop)[:4]
        if call.seed is not None:
            body["seed"] = call.seed
        started = time.perf_counter()
        try:
            response = await self._http().post("/completions", json=body)
            data = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise ModelCallError(f"model endpoint failed: {type(exc).__name__}") from exc
        if response.status_code != 200:
            raise ModelCallError(f"model endpoint answered {response.status_code}")
        return ModelReply(
            text=data["choices"][0]["text"],
            served_by=(data.get("llmvm") or {}).get("served_by", "remote"),
            model=self.model,
            latency_s=time.perf_counter() - started,
        )


class LocalStepModel:
    """An ``AgentModel`` over a local step model; concurrent calls share one batch."""

    def __init__(self, model_dir: str | Path, max_batch: int = 32) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.tokenizer.padding_side = "left"
        self.max_batch = max_batch
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None

    async def complete(self, call: StepCall) -> ModelReply:
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._worker = asyncio.get_running_loop().create_task(self._run())
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((call, future, time.perf_counter()))
        return await future

    async def _run(self) -> None:
        assert self._queue is not None
        while True:
            batch = [await self._queue.get()]
            await asyncio.sleep(0.005)  # let concurrent runs add their calls
            while not self._queue.empty() and len(batch) < self.max_batch:
                batch.append(self._queue.get_nowait())
            # One generate per temperature: a greedy call must never be sampled.
            groups: dict[float, list[Any]] = {}
            for item in batch:
                groups.setdefault(item[0].temperature, []).append(item)
            for group in groups.values():
                await self._answer(group)

    async def _answer(self, batch: list[Any]) -> None:
        try:
            texts = await asyncio.to_thread(self._generate, [c for c, _, _ in batch])
        except Exception as exc:  # hand the failure to every waiting call
            for _, future, _ in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future, started), text in zip(batch, texts, strict=True):
            if not future.done():
                future.set_result(
                    ModelReply(
                        text=text,
                        served_by="local",
                        model="agent-steps",
                        latency_s=time.perf_counter() - started,
                    )
                )

    def _generate(self, calls: list[StepCall]) -> list[str]:
        import torch

        tok = self.tokenizer
        enc = tok([c.prompt for c in calls], return_tensors="pt", padding=True)
        temperature = calls[0].temperature
        sample = temperature > 0
        with torch.inference_mode():
            out = self.model.generate(
                **enc,
                max_new_tokens=max(c.max_tokens for c in calls),
                do_sample=sample,
                temperature=temperature if sample else None,
                top_p=None,
                top_k=None,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
            )
        texts = tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        return [t.split("\n")[0] for t in texts]

    async def aclose(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            self._worker = None
            self._queue = None


class ModelSpec(BaseModel):
    """Which ``AgentModel`` to build: plain data, so it can travel to an agent actor."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["service", "openai", "local"] = Field(
        "service", description="service: /v1/complete; openai: any completions API; local."
    )
    url: str | None = Field(None, description="Base URL (service: the llmvm server).")
    api_key: str | None = Field(None, description="Bearer key for the endpoint.")
    big_model: str | None = Field(None, description="Teacher of the optimizing path.")
    small_model: str | None = Field(None, description="Student of the optimizing path.")
    model: str | None = Field(None, description="Model name of an OpenAI-compatible API.")
    path: str | None = Field(None, description="Folder of a local step model.")
    finetune: bool = Field(True, description="Record decision steps for distillation.")
    timeout_s: float = Field(60.0, gt=0)

    def key(self) -> str:
        return self.model_dump_json()


def build_model(spec: ModelSpec) -> AgentModel:
    if spec.kind == "service":
        if not spec.url:
            raise ValueError("a service model needs its url")
        return ServiceModel(
            spec.url,
            api_key=spec.api_key,
            big_model=spec.big_model,
            small_model=spec.small_model,
            finetune=spec.finetune,
            timeout_s=spec.timeout_s,
        )
    if spec.kind == "openai":
        if not spec.url or not spec.model:
            raise ValueError("an openai model needs url and model")
        return OpenAIModel(spec.url, spec.model, api_key=spec.api_key, timeout_s=spec.timeout_s)
    if not spec.path:
        raise ValueError("a local model needs its path")
    return LocalStepModel(spec.path)
