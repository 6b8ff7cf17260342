"""The HTTP edge: FastAPI routes, auth, and the mapping of every failure to a typed JSON error.

Every error leaves as OpenAI's shape (``{"error": {"message", "type", "param", "code"}}``)
with a real status code, plus LLM-VM's ``status``/``resp`` keys for its old clients. Bad input
is a 4xx naming the field; nothing a client sends can produce a 500 or a hang.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray.exceptions import RayActorError, RayError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmvm_ray.errors import AuthenticationError, LLMVMError
from llmvm_ray.optimizer.task import tenant_of
from llmvm_ray.protocol import (
    AgentRunRequest,
    ChatCompletionRequest,
    CompleteRequest,
    CompletionRequest,
    ErrorDetail,
    ErrorResponse,
    FieldError,
    FineTuneJobRequest,
)
from llmvm_ray.serve.openai_api import SSE_DONE, sse
from llmvm_ray.serve.quotas import TenantRates
from llmvm_ray.serve.request_limits import check_request
from llmvm_ray.serve.service import OpenAIService

logger = logging.getLogger(__name__)


def error_response(
    status: int,
    message: str,
    type_: str,
    param: str | None = None,
    code: str | None = None,
    retry_after_s: float | None = None,
) -> JSONResponse:
    body = ErrorResponse(
        error=ErrorDetail(message=message, type=type_, param=param, code=code),
        status=status,
        resp=message,
    )
    headers = None if retry_after_s is None else {"Retry-After": str(math.ceil(retry_after_s))}
    return JSONResponse(status_code=status, content=body.model_dump(), headers=headers)


def _error_fields(
    exc: BaseException,
) -> tuple[int, str, str, str | None, str | None, float | None]:
    """``error_response``'s arguments for a failure (a response, or a stream's last event)."""
    typed = _typed_error(exc)
    if typed is not None:
        return typed.status, typed.message, typed.type, typed.param, None, typed.retry_after_s
    if isinstance(exc, TimeoutError):
        return 504, "the request timed out", "timeout_error", None, None, None
    if isinstance(exc, RayActorError):
        return 503, "the model replica is unavailable", "unavailable", None, None, None
    logger.error("unhandled error", exc_info=exc)
    return 500, f"internal error: {type(exc).__name__}", "internal_error", None, None, None


async def _guarded_stream(events: AsyncIterator[str], state: Any) -> AsyncIterator[str]:
    """SSE events, ending with an OpenAI-style error event and the terminator when the
    stream fails after its headers went out (never a silent clean end); the request is then
    counted with the failure's status (``state.llmvm_stream_status``)."""
    try:
        async for event in events:
            yield event
    except Exception as exc:  # noqa: BLE001 - every failure ends the stream the same way
        status, message, type_, param, code, _ = _error_fields(exc)
        if state is not None:
            state.llmvm_stream_status = status
        detail = ErrorDetail(message=message, type=type_, param=param, code=code)
        yield sse(ErrorResponse(error=detail, status=status, resp=message))
        yield SSE_DONE


def _typed_error(exc: BaseException) -> LLMVMError | None:
    """Our error inside ``exc``: Ray wraps a replica's exception as ``RayTaskError`` whose
    ``cause`` is the original."""
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, LLMVMError):
            return exc
        exc = getattr(exc, "cause", None) or exc.__cause__
        seen += 1
    return None


# pydantic puts the union member it tried into the error location (e.g. ``prompt.str``).
_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "dict", "list", "none"})


def _is_type_tag(part: object) -> bool:
    text = str(part)
    return text in _TYPE_TAGS or "[" in text or "(" in text


def _validation_error(exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    if not errors:
        return error_response(400, "invalid request", "invalid_request_error")
    err = errors[0]
    if err.get("type") == "json_invalid":
        return error_response(
            400,
            f"request body is not valid JSON: {err.get('msg')}",
            "invalid_request_error",
            param="body",
            code="invalid_json",
        )
    cause = (err.get("ctx") or {}).get("error")
    loc = [str(p) for p in err.get("loc", ()) if p != "body" and not _is_type_tag(p)]
    if isinstance(cause, FieldError):
        param, message = cause.param, str(cause)
    else:
        param = ".".join(loc) or None
        message = err.get("msg", "invalid value")
        if err.get("type") == "missing" and param is None:
            param, message = "body", "request body is missing: send a JSON object"
        elif err.get("type") == "missing":
            message = f"missing required field '{param}'"
        elif err.get("type") == "model_attributes_type":
            message = "request body must be a JSON object"
        elif param:
            message = f"{param}: {message}"
    return error_response(400, message, "invalid_request_error", param=param)


# Dependencies are ``async def`` although they never await: FastAPI runs a plain ``def``
# dependency in a worker thread, one thread hop per request on the hot path.
async def authorize(request: Request) -> str:
    """Check the bearer key against the app's keys; return the tenant it belongs to."""
    keys: list[bytes] = request.app.state.api_keys
    if not keys:
        tenant = tenant_of(None)
    else:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise AuthenticationError("missing API key: send 'Authorization: Bearer <key>'")
        given = token.strip().encode()
        if not any(hmac.compare_digest(given, k) for k in keys):
            raise AuthenticationError("invalid API key")
        tenant = tenant_of(given.decode())
    request.app.state.rates.take(tenant)
    return tenant


Tenant = Annotated[str, Depends(authorize)]


async def bearer_key(request: Request) -> str | None:
    """The caller's own key, handed to agents so their model calls stay in its tenant."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


BearerKey = Annotated[str | None, Depends(bearer_key)]


class _RequestCounter:
    """Counts every HTTP request by route, model and status code.

    A plain ASGI middleware: Starlette's ``@app.middleware("http")`` runs each request in an
    extra task with in-memory streams, a cost paid on every request of the hot path.
    """

    def __init__(self, app: ASGIApp, service: OpenAIService) -> None:
        self.app = app
        self.metrics = service.metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # what the client gets if the app raises before answering

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            # Label by route, never by raw path: unknown paths must not grow the label set.
            route = getattr(scope.get("route"), "path", "other")
            # Handlers that know the request's model put its label in the request's state
            # (see ``OpenAIService.model_label``).
            state = scope.get("state", {})
            model = state.get("llmvm_model", "none")
            # A stream that failed after its 200 went out counts with the failure's status.
            self.metrics.request(route, model, state.get("llmvm_stream_status", status))


class BodyLimit:
    """Refuses a request body larger than ``max_bytes`` (413) before the app parses it or
    checks its key: at once by its ``Content-Length``, else (chunked) after reading at most
    ``max_bytes`` of it, which it then hands on as one message.

    Not FastAPI's own ``max_body_size``: whenever ``Content-Length`` is too large, that one
    replaces any answer with a plain-text 413, not OpenAI's error shape.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length")
        if length is not None:  # the server holds the body to its Content-Length
            if length.isdigit() and int(length) > self.max_bytes:
                await self._refuse(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        body, message = bytearray(), await receive()
        while message["type"] == "http.request":
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            if not message.get("more_body"):
                message = {"type": "http.request", "body": bytes(body), "more_body": False}
                break
            message = await receive()
        first: list[Message] = [message]

        async def replay() -> Message:
            return first.pop() if first else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(
            413,
            f"the request body is larger than {self.max_bytes} bytes (serve.max_body_bytes)",
            "invalid_request_error",
            param="body",
            code="request_too_large",
        )
        await response(scope, receive, send)


def create_app(service: OpenAIService) -> FastAPI:
    """The ASGI app of one ingress replica, bound to its service."""
    config = service.config.serve
    timeout = config.request_timeout_s
    # The API's description follows the API's auth rule unless the operator publishes it.
    public = config.public_docs or not config.api_keys
    app = FastAPI(
        title="llmvm-ray",
        version="0.1.0",
        redoc_url=None,
        docs_url="/docs" if public else None,
        openapi_url="/openapi.json" if public else None,
    )
    app.state.api_keys = [k.get_secret_value().encode() for k in config.api_keys]
    if not public:
        # Swagger UI cannot send a key, so /docs is not served; the document is, with one.
        @app.get("/openapi.json", include_in_schema=False)
        async def openapi_json(_: Tenant) -> JSONResponse:
            return JSONResponse(app.openapi())

    app.state.rates = TenantRates(service.config.quotas)

    @app.exception_handler(RequestValidationError)
    async def _on_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_error(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _on_http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        # FastAPI's only 400 is a body it could not parse (nested too deep, not UTF-8).
        param = "body" if exc.status_code == 400 else None
        return error_response(exc.status_code, str(exc.detail), type_, param=param)

    async def _on_error(_: Request, exc: Exception) -> JSONResponse:
        return error_response(*_error_fields(exc))

    # Handlers for specific classes run inside the app (a bare ``Exception`` handler would
    # still re-raise into the server); Ray's wrapped replica errors are ``RayError``s.
    for exc_class in (LLMVMError, RayError, TimeoutError, Exception):
        app.add_exception_handler(exc_class, _on_error)

    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    app.add_middleware(_RequestCounter, service=service)  # outermost: it counts the 413s too

    async def answer(call: Any, request: Request | None = None) -> Response:
        async with asyncio.timeout(timeout):
            result = await call
        if isinstance(result, AsyncIterator):
            state = request.state if request is not None else None
            return StreamingResponse(_guarded_stream(result, state), media_type="text/event-stream")
        if isinstance(result, dict):
            return JSONResponse(result)
        return JSONResponse(result.model_dump())

    @app.post("/v1/completions")
    async def completions(request: Request, body: CompletionRequest, tenant: Tenant) -> Response:
        request.state.llmvm_model = service.model_label(body.model)
        check_request(body, config)
        return await answer(service.completions(body, tenant), request)

    @app.post("/v1/chat/completions")
    async def chat_completions(
        request: Request, body: ChatCompletionRequest, tenant: Tenant
    ) -> Response:
        request.state.llmvm_model = service.model_label(body.model)
        check_request(body, config)
        return await answer(service.chat(body, tenant), request)

    @app.post("/v1/complete")
    async def complete(
        request: Request, body: CompleteRequest, tenant: Tenant, key: BearerKey
    ) -> Response:
        """LLM-VM's completion call, through the optimizer (with ``tools``: REBEL)."""
        request.state.llmvm_model = service.model_label("llmvm")
        check_request(body, config)
        return await answer(service.optimizing_endpoints().complete(body, tenant, key))

    @app.post("/v1/agents/runs")
    async def agent_run(
        request: Request, body: AgentRunRequest, tenant: Tenant, key: BearerKey
    ) -> Response:
        """One agent run (rebel, backward or flat) with its full trace."""
        request.state.llmvm_model = service.model_label("llmvm")
        check_request(body, config)
        return await answer(service.optimizing_endpoints().agent_run(body, tenant, key))

    @app.get("/v1/models")
    async def models(tenant: Tenant) -> Response:
        return JSONResponse((await service.models(tenant)).model_dump())

    @app.get("/v1/tasks")
    async def tasks(tenant: Tenant) -> Response:
        return JSONResponse(await service.optimizing_endpoints().tasks(tenant))

    @app.get("/v1/tasks/{task_id}")
    async def task(task_id: str, tenant: Tenant) -> Response:
        return JSONResponse(await service.optimizing_endpoints().task(tenant, task_id))

    @app.post("/v1/fine_tuning/jobs")
    async def create_fine_tune(body: FineTuneJobRequest, tenant: Tenant) -> Response:
        fields = body.model_dump(exclude_none=True)
        return await answer(service.finetune_call("create_job", fields, tenant))

    @app.get("/v1/fine_tuning/jobs")
    async def list_fine_tunes(
        tenant: Tenant, after: str | None = None, limit: int = 20
    ) -> Response:
        return await answer(service.finetune_call("list_jobs", tenant, after, limit))

    @app.get("/v1/fine_tuning/jobs/{job_id}")
    async def get_fine_tune(job_id: str, tenant: Tenant) -> Response:
        return await answer(service.finetune_call("retrieve_job", job_id, tenant))

    @app.post("/v1/fine_tuning/jobs/{job_id}/cancel")
    async def cancel_fine_tune(job_id: str, tenant: Tenant) -> Response:
        return await answer(service.finetune_call("cancel_job", job_id, tenant))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/stats")
    async def stats(tenant: Tenant) -> Response:
        """The caller's summary: requests, tokens, teacher/student share, savings,
        fine-tunes by state, tasks by route (see ``serve/stats.py``)."""
        return JSONResponse((await service.stats(tenant)).model_dump())

    # No ``/metrics`` here: Ray's metrics agent exports every replica's and actor's metrics
    # on each node's metrics export port (see ``observability/metrics.py``).

    return app
