"""The OpenAI-compatible service behind the HTTP routes.

It resolves a request's ``model`` to a base model replica (and adapter), fans a request out
to the replica deployment through Serve handles, and shapes results and stream chunks.
Requests for ``model="llmvm"`` go to the optimizing endpoints (``optimizing.py``); fine-tune
jobs to ``train/``. It knows nothing of FastAPI: ``routes.py`` is the HTTP edge.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from llmvm_ray.config import Config
from llmvm_ray.engine.types import AdapterRef, GenerationResult, StreamDelta
from llmvm_ray.errors import InvalidRequestError, NotFoundError, ServiceUnavailableError
from llmvm_ray.observability.metrics import ServeMetrics
from llmvm_ray.protocol import (
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    ModelList,
    StatsResponse,
    Usage,
    new_id,
    now,
)
from llmvm_ray.runtime import generate
from llmvm_ray.serve import openai_api as oa
from llmvm_ray.serve.optimizing import OPTIMIZING_MODEL, OptimizingEndpoints
from llmvm_ray.serve.stats import collect_stats
from llmvm_ray.train import openai_api
from llmvm_ray.train.service import FinetuneService

ADAPTER_SEPARATOR = ":"


class ReplicaHandle(Protocol):
    """The slice of a Serve ``DeploymentHandle`` to a ``ModelServer`` this service uses."""

    def options(self, **kwargs: Any) -> ReplicaHandle: ...

    @property
    def generate(self) -> Any: ...

    @property
    def generate_stream(self) -> Any: ...


class OpenAIService:
    """Everything behind the routes. ``optimizer`` is the optimizer actor's handle; without
    one (tests of plain serving) the optimizing endpoints answer 503."""

    def __init__(
        self, config: Config, replicas: dict[str, ReplicaHandle], optimizer: Any = None
    ) -> None:
        self.config = config
        self.replicas = replicas
        self.optimizer = optimizer
        self.metrics = ServeMetrics(config.serve.app_name)
        self.optimizing = (
            OptimizingEndpoints(config, replicas, optimizer, self.metrics)
            if optimizer is not None
            else None
        )
        self.created = now()
        self._finetune_service: FinetuneService | None = None

    # -- models -------------------------------------------------------------------------

    async def _promoted(self, tenant: str) -> list[dict[str, str]]:
        if self.optimizer is None:
            return []
        return await self.optimizer.adapters.remote(tenant)

    async def resolve(self, model: str, tenant: str) -> oa.Target:
        """``base`` or ``base:adapter`` → the replica deployment and adapter to use.

        Adapters are the configured ones plus the students the optimizer promoted for this
        tenant; another tenant's student does not exist as far as this tenant can tell.
        """
        base, sep, adapter = model.partition(ADAPTER_SEPARATOR)
        try:
            model_config = self.config.model(base)
        except KeyError:
            raise NotFoundError(f"model '{model}' does not exist", param="model") from None
        if not sep:
            return oa.Target(requested=model, base=base)
        path = model_config.adapters.get(adapter)
        if path is None and base == self.config.optimizer.student_model:
            promoted = {a["name"]: a["path"] for a in await self._promoted(tenant)}
            path = promoted.get(adapter)
        if path is None:
            raise NotFoundError(
                f"adapter '{adapter}' of model '{base}' does not exist", param="model"
            )
        return oa.Target(requested=model, base=base, adapter=AdapterRef(adapter, path))

    async def models(self, tenant: str) -> ModelList:
        cards = []
        if self.optimizer is not None:
            cards.append(ModelCard(id=OPTIMIZING_MODEL, created=self.created, root="optimizer"))
        for m in self.config.models:
            cards.append(ModelCard(id=m.name, created=self.created, root=m.model_uri))
            adapters = dict(m.adapters)
            if m.name == self.config.optimizer.student_model:
                adapters.update({a["name"]: a["path"] for a in await self._promoted(tenant)})
            for adapter, path in sorted(adapters.items()):
                cards.append(
                    ModelCard(
                        id=f"{m.name}{ADAPTER_SEPARATOR}{adapter}",
                        created=self.created,
                        root=path,
                        parent=m.name,
                    )
                )
        return ModelList(data=cards)

    # -- the optimizing endpoints -----------------------------------------------------

    def optimizing_endpoints(self) -> OptimizingEndpoints:
        if self.optimizing is None:
            raise ServiceUnavailableError("the optimizer is not running in this deployment")
        return self.optimizing

    # -- fine-tunes (OpenAI fine_tuning.jobs) -------------------------------------------

    def _finetunes(self) -> FinetuneService:
        if self._finetune_service is None:
            self._finetune_service = FinetuneService(self.config)
        return self._finetune_service

    async def finetune_call(self, name: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """One ``llmvm_ray.train.openai_api`` call (they block on Ray: run in a thread)."""
        return await asyncio.to_thread(
            getattr(openai_api, name), self._finetunes(), *args, **kwargs
        )

    # -- observability ------------------------------------------------------------------

    def model_label(self, model: str) -> str:
        """The ``model`` metric label of a request: its base model if configured (never the
        raw string a client sent, which would grow the label set without bound)."""
        if model == OPTIMIZING_MODEL:
            return model
        base = model.partition(ADAPTER_SEPARATOR)[0]
        return base if any(m.name == base for m in self.config.models) else "unknown"

    async def stats(self, tenant: str) -> StatsResponse:
        """``GET /v1/stats``: the tenant's summary from the optimizer actor and registry."""
        return await collect_stats(
            self.config, self.optimizer, lambda: self._finetunes().registry, tenant
        )

    # -- completions --------------------------------------------------------------------

    def _default_max_tokens(self, target: oa.Target) -> int:
        return self.config.model(target.base).default_max_tokens

    async def completions(
        self, request: CompletionRequest, tenant: str
    ) -> CompletionResponse | AsyncIterator[str]:
        started = time.perf_counter()
        if request.model == OPTIMIZING_MODEL:
            return await self.optimizing_endpoints().completion(request, tenant)
        _plain_model(request)
        target = await self.resolve(request.model, tenant)
        seed = oa.seed_of(request.seed)
        params = oa.sampling_params(request, self._default_max_tokens(target), seed)
        response_id = new_id("cmpl")
        prompts = request.prompts()
        gen_requests = [
            oa.generation_request(f"{response_id}-{i}", p, params, target)
            for i, p in enumerate(prompts)
        ]
        handle = self.replicas[target.base]
        if request.stream:
            streams = [handle.options(stream=True).generate_stream.remote(r) for r in gen_requests]
            created = now()

            def make_chunk(i: int, delta: StreamDelta) -> CompletionResponse:
                choice = CompletionChoice(
                    index=i * request.n + delta.index,
                    text=delta.text,
                    finish_reason=delta.finish_reason,
                )
                return CompletionResponse(
                    id=response_id, created=created, model=target.requested, choices=[choice]
                )

            def usage_chunk(usage: Usage) -> CompletionResponse:
                return CompletionResponse(
                    id=response_id,
                    created=created,
                    model=target.requested,
                    choices=[],
                    usage=usage,
                )

            # With echo, each choice starts with its prompt.
            prologue = (
                [
                    make_chunk(i, StreamDelta(r.request_id, j, prompts[i]))
                    for i, r in enumerate(gen_requests)
                    for j in range(request.n)
                ]
                if request.echo
                else []
            )
            return await self._stream(
                "completions",
                target,
                seed,
                started,
                streams,
                make_chunk,
                usage_chunk if _wants_usage(request) else None,
                prologue,
            )
        calls = [asyncio.ensure_future(generate(handle, r)) for r in gen_requests]
        results = await _all_or_cancel(calls)
        usage = oa.usage_of(results)
        meta = oa.metadata(target, seed, started, usage)
        self.metrics.observe("completions", target.requested, meta)
        return oa.completion_response(
            response_id,
            now(),
            target,
            list(results),
            request.n,
            meta,
            echo_prompts=prompts if request.echo else None,
        )

    async def chat(
        self, request: ChatCompletionRequest, tenant: str
    ) -> ChatCompletionResponse | AsyncIterator[str]:
        started = time.perf_counter()
        if request.model == OPTIMIZING_MODEL:
            return await self.optimizing_endpoints().chat(request, tenant)
        _plain_model(request)
        target = await self.resolve(request.model, tenant)
        seed = oa.seed_of(request.seed)
        params = oa.sampling_params(request, self._default_max_tokens(target), seed)
        response_id = new_id("chatcmpl")
        # The replica renders the messages with its tokenizer's chat template.
        gen_request = oa.generation_request(response_id, "", params, target)
        messages = oa.chat_messages(request)
        handle = self.replicas[target.base]
        if request.stream:
            stream = handle.options(stream=True).generate_stream.remote(gen_request, messages)
            created = now()

            def make_chunk(choices: list[ChatChunkChoice], **extra: Any) -> ChatCompletionChunk:
                return ChatCompletionChunk(
                    id=response_id,
                    created=created,
                    model=target.requested,
                    choices=choices,
                    **extra,
                )

            def delta_chunk(_: int, delta: StreamDelta) -> ChatCompletionChunk:
                content = ChatDelta(content=delta.text or None)
                choice = ChatChunkChoice(
                    index=delta.index, delta=content, finish_reason=delta.finish_reason
                )
                return make_chunk([choice])

            # OpenAI streams open with the assistant role for every choice.
            prologue = [
                make_chunk(
                    [
                        ChatChunkChoice(index=j, delta=ChatDelta(role="assistant", content=""))
                        for j in range(request.n)
                    ]
                )
            ]
            return await self._stream(
                "chat",
                target,
                seed,
                started,
                [stream],
                delta_chunk,
                (lambda usage: make_chunk([], usage=usage)) if _wants_usage(request) else None,
                prologue,
            )
        result = await generate(handle, gen_request, messages)
        usage = oa.usage_of([result])
        meta = oa.metadata(target, seed, started, usage)
        self.metrics.observe("chat", target.requested, meta)
        return oa.chat_response(response_id, now(), target, result, meta)

    # -- streaming ----------------------------------------------------------------------

    async def _stream(
        self,
        endpoint: str,
        target: oa.Target,
        seed: int,
        started: float,
        streams: list[Any],
        make_chunk: Callable[[int, StreamDelta], Any],
        usage_chunk: Callable[[Usage], Any] | None,
        prologue: list[Any],
    ) -> AsyncIterator[str]:
        """SSE events for one or more replica streams.

        Each stream's first event is pulled before returning, so a validation error becomes
        a 4xx response rather than a broken stream. The ``llmvm`` metadata rides on the last
        chunk that carries a ``finish_reason`` (finish chunks are held back until the next
        event, which costs content tokens no latency), so clients that read
        ``chunk.choices[0]`` never meet an empty chunk unless they asked for usage.
        """
        try:
            firsts = await asyncio.gather(*(s.__anext__() for s in streams))
        except BaseException:
            _cancel(streams)
            raise

        async def events() -> AsyncIterator[str]:
            for chunk in prologue:
                yield oa.sse(chunk)
            results: list[GenerationResult] = []
            held = None
            first_token_at: float | None = None
            async for i, event in _merge(streams, firsts):
                if isinstance(event, GenerationResult):
                    results.append(event)
                    continue
                if first_token_at is None and event.text:
                    first_token_at = time.perf_counter()
                if held is not None:
                    yield oa.sse(held)
                    held = None
                chunk = make_chunk(i, event)
                if event.finish_reason is None:
                    yield oa.sse(chunk)
                else:
                    held = chunk
            usage = oa.usage_of(results)
            meta = oa.metadata(target, seed, started, usage)
            self.metrics.observe(endpoint, target.requested, meta, first_token_at, started)
            if held is not None:
                held.llmvm = meta
                yield oa.sse(held)
            if usage_chunk is not None:
                yield oa.sse(usage_chunk(usage))
            yield oa.SSE_DONE

        return events()


def _plain_model(request: CompletionRequest | ChatCompletionRequest) -> None:
    """The optimizer's extensions mean nothing to a plain model: refused, not ignored."""
    for name in ("context", "finetune", "data_synthesis"):
        if getattr(request, name, None):
            raise InvalidRequestError(
                f"{name} is only available with model '{OPTIMIZING_MODEL}'", param=name
            )


async def _all_or_cancel(responses: list[Any]) -> list[GenerationResult]:
    """The results of a batch's replica calls; when one fails (a prompt the engine refuses),
    the calls still running are cancelled rather than decoded for an answer nobody gets."""
    try:
        return list(await asyncio.gather(*responses))
    except BaseException:
        _cancel(responses)
        raise


def _cancel(responses: list[Any]) -> None:
    """Cancel replica calls (tasks of ``runtime.generate``, or Serve's response generators);
    finished ones ignore it."""
    for response in responses:
        response.cancel()


def _wants_usage(request: CompletionRequest | ChatCompletionRequest) -> bool:
    return bool(request.stream_options and request.stream_options.include_usage)


async def _merge(streams: list[Any], firsts: list[Any]) -> AsyncIterator[tuple[int, Any]]:
    """Interleave several async streams (each already advanced by one event) as events
    arrive, tagging each event with its stream's index."""
    queue: asyncio.Queue = asyncio.Queue()
    finished = object()

    async def pump(i: int, stream: Any, first: Any) -> None:
        try:
            await queue.put((i, first))
            async for event in stream:
                await queue.put((i, event))
        except BaseException as exc:  # re-raised in the consumer
            await queue.put((i, exc))
        finally:
            await queue.put((i, finished))

    tasks = [
        asyncio.create_task(pump(i, s, f))
        for i, (s, f) in enumerate(zip(streams, firsts, strict=True))
    ]
    remaining = len(tasks)
    try:
        while remaining:
            i, event = await queue.get()
            if event is finished:
                remaining -= 1
            elif isinstance(event, BaseException):
                raise event
            else:
                yield i, event
    finally:
        for task in tasks:
            task.cancel()
