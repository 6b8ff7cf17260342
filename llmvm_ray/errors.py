"""Typed errors raised inside the system and mapped to HTTP statuses at the edge.

Inside, every layer raises these (never returns error values, the LLM-VM defect); the ingress
turns them into OpenAI-shaped JSON error bodies. They must stay picklable so they survive a
trip through Ray (a replica's exception reaches the ingress as a ``RayTaskError`` that is
also an instance of the original class).
"""

from __future__ import annotations


class LLMVMError(Exception):
    """Base class. ``status`` is the HTTP status the edge answers with; ``retry_after_s``,
    when set, its ``Retry-After`` header (an overloaded upstream says when to come back)."""

    status: int = 500
    type: str = "internal_error"

    def __init__(
        self, message: str, param: str | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after_s = retry_after_s

    def __reduce__(self):
        return (self.__class__, (self.message, self.param, self.retry_after_s))


class InvalidRequestError(LLMVMError):
    """The request is malformed or asks for something impossible; ``param`` names the field."""

    status = 400
    type = "invalid_request_error"


class AuthenticationError(LLMVMError):
    status = 401
    type = "authentication_error"


class NotFoundError(LLMVMError):
    """An unknown model, adapter, task or resource id."""

    status = 404
    type = "not_found_error"


class ConflictError(LLMVMError):
    """The resource is in a state that forbids the request (e.g. cancelling a finished run)."""

    status = 409
    type = "conflict_error"


class NotImplementedByServerError(LLMVMError):
    """A documented field or feature this server does not provide (yet)."""

    status = 501
    type = "not_implemented_error"


class ServiceUnavailableError(LLMVMError):
    status = 503
    type = "unavailable"


class ConfigError(LLMVMError):
    """The configuration (file, env vars or flags) is invalid."""

    status = 500
    type = "config_error"


class DeployError(LLMVMError):
    """The Serve app did not become healthy (a replica failed to start, or time ran out)."""

    status = 503
    type = "deploy_error"


class RateLimitError(LLMVMError):
    """A tenant's quota (requests per second, tasks, fine-tunes) is used up; come back later."""

    status = 429
    type = "rate_limit_error"
