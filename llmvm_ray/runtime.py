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
    }


def init_ray(config: RayConfig, **kwargs: Any) -> Any:
    """Connect to ``config.address`` or start a local Ray bound to loopback.

    Idempotent: returns the existing connection when this process is already connected.
    """
    import ray

    for key, value in ray_environment(config).items():
        os.environ.setdefault(key, value)
    if ray.is_initialized():
        return ray.get_runtime_context()
    if config.address:
        return ray.init(address=config.address, namespace=config.namespace, **kwargs)
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
