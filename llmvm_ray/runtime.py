"""Joining or starting Ray, the same way from the CLI, jobs, tests and the demo.

Ray 2.60 reads a few settings from the environment of every Ray process (auth mode, where to
bind); they must agree across the driver, ``ray start`` and clients, so they are derived here
from the config — the one place — and exported before Ray starts.
"""

from __future__ import annotations

import os
from typing import Any

from llmvm_ray.config import RayConfig


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
        # (measured in our tests). Costs ~0.1 ms per call in the ingress.
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
    _keep_on_loopback()
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


def _keep_on_loopback() -> None:
    """Make this process's Ray keep a local node on 127.0.0.1.

    Ray reads ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` once, when ``ray`` is first imported, and
    while it is on, ``ray.init`` turns ``_node_ip_address="127.0.0.1"`` into the machine's
    network address and every Ray process listens on all interfaces (measured: GCS, raylet
    and workers on ``*``). When something imported ``ray`` before the variable was set, the
    parsed flag is corrected here; the processes Ray starts inherit the variable.
    """
    from ray._private import ray_constants

    if getattr(ray_constants, "ENABLE_RAY_CLUSTER", False):
        ray_constants.ENABLE_RAY_CLUSTER = False
