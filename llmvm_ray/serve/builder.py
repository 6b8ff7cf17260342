"""Turn a ``Config`` into a Ray Serve application.

One ``ModelServer`` deployment per configured base model (named after the model), and one
FastAPI ingress deployment that holds handles to all of them. ``build_app`` is what
``llmvm serve`` runs; ``app_builder`` is the same for ``serve run`` and Serve config files
(``import_path: llmvm_ray.serve.builder:app_builder`` with ``args: {config: path.toml}``).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from ray import serve
from ray.serve import Application

from llmvm_ray.config import Config, ModelConfig, ServeConfig, load_config
from llmvm_ray.errors import ConfigError
from llmvm_ray.optimizer.actor import get_optimizer
from llmvm_ray.ray_private import replica_transport
from llmvm_ray.runtime import deployment_name
from llmvm_ray.serve.model_server import ModelServer
from llmvm_ray.serve.routes import create_app
from llmvm_ray.serve.service import OpenAIService


@serve.ingress()
class Ingress:
    """The HTTP API replica. Its FastAPI app is built at replica start (not at import)."""

    def __init__(self, config: Config, replicas: dict[str, Any]) -> None:
        # The handles were made where the app was built, with that process's Serve settings:
        # a driver that imported ray.serve before Ray's environment was set gives handles
        # that use Ray actor calls even in throughput-optimized mode. Take the transport
        # from this replica's process instead, which Ray started with the cluster's settings
        # (gRPC in that mode).
        replicas = {name: replica_transport(handle) for name, handle in replicas.items()}
        optimizer = get_optimizer(config) if config.optimizer.enabled else None
        self.service = OpenAIService(config, replicas, optimizer)

    def __serve_build_asgi_app__(self) -> Any:
        return create_app(self.service)


def _model_deployment(model: ModelConfig) -> Application:
    options: dict[str, Any] = {
        "name": deployment_name(model),
        "ray_actor_options": {"num_cpus": model.num_cpus, "num_gpus": model.num_gpus},
        "max_ongoing_requests": model.max_ongoing_requests,
        "health_check_period_s": 10,
        # One access-log line per handle call costs the replica CPU on every request; the
        # ingress logs each HTTP request already.
        "logging_config": {"enable_access_log": False},
    }
    if model.autoscaling is not None:
        a = model.autoscaling
        options["autoscaling_config"] = {
            "min_replicas": a.min_replicas,
            "max_replicas": a.max_replicas,
            "target_ongoing_requests": a.target_ongoing_requests,
        }
    else:
        options["num_replicas"] = model.num_replicas
    return serve.deployment(ModelServer).options(**options).bind(model)


def build_app(config: Config) -> Application:
    """The whole service as one Serve application."""
    if not config.models:
        raise ConfigError(
            "no models configured: add a [[models]] entry (name, model_uri) to the config "
            "file or pass --model to `llmvm serve`"
        )
    check_exposure(config.serve)
    replicas = {m.name: _model_deployment(m) for m in config.models}
    ingress = serve.deployment(Ingress).options(
        name="ingress",
        num_replicas=config.serve.ingress_replicas,
        ray_actor_options={"num_cpus": config.serve.ingress_num_cpus},
        max_ongoing_requests=1024,
    )
    return ingress.bind(config, replicas)


def check_exposure(serve_config: ServeConfig) -> None:
    """Refuse to serve other machines without keys unless the operator says so: an open
    endpoint spends the teacher's money and reads every tenant's data."""
    s = serve_config
    if s.api_keys or s.allow_unauthenticated or _is_loopback(s.host):
        return
    raise ConfigError(
        f"serve.host {s.host!r} is reachable from other machines and no serve.api_keys are "
        "set: set keys (e.g. LLMVM_SERVE__API_KEYS='[\"sk-...\"]' from a secret), bind to "
        "127.0.0.1, or set serve.allow_unauthenticated = true to serve without auth on purpose",
        param="serve.api_keys",
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve anywhere


def app_builder(args: dict[str, Any]) -> Application:
    """Entry point for ``serve run`` / Serve config files: ``args`` may name a ``config``
    TOML file; ``LLMVM_*`` environment variables apply as usual."""
    return build_app(load_config(args.get("config")))
