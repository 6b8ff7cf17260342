"""The Ray runtime this app runs on: joining or starting it, and finding the app's parts.

Joining is done the same way from the CLI, jobs, tests and the demo. Ray 2.60 reads a few
settings from the environment of every Ray process (auth mode, where to bind); they must
agree across the driver, ``ray start`` and clients, so they are derived here from the config
— the one place — and exported before Ray starts.

Finding: the names of the app's deployments, a handle to a model replica and the service's
URL are computed here only, so the optimizer, synthesis, agents and serve agree on them
without importing one another; ``generate`` is the one way they call a replica.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from llmvm_ray.config import Config, ModelConfig, RayConfig
from llmvm_ray.ray_private import keep_ray_on_loopback


def ray_environment(config: RayConfig) -> dict[str, str]:
    """Environment every Ray process of this deployment must share."""
    return {
        "RAY_AUTH_MODE": config.auth_mode,
        # Ray otherwise listens on every interface even when given a loopback node address.
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
        # Read by every Serve process at import: the controller, proxies and replicas.
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1" if config.serve_throughput_optimized else "0",
        # ...except that handles keep their router on its own loop (Ray's default): that mode
        # binds a handle to the event loop that first uses it, so a handle fails from sync
        # code ("No event loop running") and at serve.shutdown() once that loop has closed
        # (measured in our tests). It costs a little per call in the ingress
        # (benchmarks/RESULTS.md, "Figures behind design choices").
        "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "1",
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": str(config.serve_drain_s),
    }


def export_ray_environment(config: RayConfig) -> None:
    """Put ``ray_environment`` into this process's environment (keeping values already set).

    Call it before anything imports ``ray.serve``: Serve reads its settings once, at import,
    and a handle built in this process keeps them (in throughput-optimized mode, whether it
    calls replicas over gRPC or by Ray actor calls).
    """
    for key, value in ray_environment(config).items():
        os.environ.setdefault(key, value)


def init_ray(config: RayConfig, **kwargs: Any) -> Any:
    """Connect to ``config.address`` or start a local Ray bound to loopback.

    Idempotent: returns the existing connection when this process is already connected.
    """
    export_ray_environment(config)  # before importing ray: it reads some of these at import
    import ray

    if ray.is_initialized():
        return ray.get_runtime_context()
    kwargs.setdefault("log_to_driver", config.log_to_driver)
    if config.address:
        return ray.init(address=config.address, namespace=config.namespace, **kwargs)
    # Ray may have parsed its loopback variable before it was exported above.
    keep_ray_on_loopback()
    return ray.init(
        namespace=config.namespace,
        num_cpus=config.num_cpus,
        include_dashboard=config.include_dashboard,
        dashboard_host="127.0.0.1",
        _node_ip_address="127.0.0.1",
        # Where this node's metrics agent serves every process's metrics (Prometheus).
        _metrics_export_port=config.metrics_export_port,
        **kwargs,
    )


def deployment_name(model: ModelConfig) -> str:
    """The Serve deployment that hosts ``model``'s replicas."""
    return "model-" + model.name.replace("/", "--")


def model_handle(config: Config, model_name: str) -> Any:
    """A handle to the replicas of the configured model ``model_name`` (``KeyError`` if it
    is not configured), from any process connected to the cluster."""
    from ray import serve

    return serve.get_deployment_handle(
        deployment_name(config.model(model_name)), app_name=config.serve.app_name
    )


async def generate(handle: Any, *args: Any) -> Any:
    """``handle.generate`` on a model replica, tried once more when the replica that took it
    died (Serve routes the retry to a live one). Safe because every request carries its seed:
    the retry gives the same text. Streams are not retried: their deltas already went out.
    Cancelling the caller cancels the replica's work too."""
    from ray.exceptions import RayActorError

    try:
        return await _cancellable(handle.generate.remote(*args))
    except RayActorError:
        return await _cancellable(handle.generate.remote(*args))


async def _cancellable(response: Any) -> Any:
    """Await a Serve response; if the caller gives up, so does the replica (Serve does not
    cancel a handle call whose awaiting task is cancelled)."""
    try:
        return await response
    except asyncio.CancelledError:
        response.cancel()
        raise


def service_url(config: Config) -> str:
    """The base URL of the app's HTTP API as a process on this machine reaches it."""
    s = config.serve
    host = "127.0.0.1" if s.host in ("0.0.0.0", "::") else s.host
    return f"http://{host}:{s.port}{s.route_prefix.rstrip('/')}"
