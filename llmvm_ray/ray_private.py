"""Every use of a Ray private API, in one place, each with the reason no public one serves.

This is the checklist for a Ray upgrade (written against ray 2.60): run the tests that name
these functions (``tests/test_runtime.py``, ``tests/serve``, ``tests/ops``) and read the
release notes for each name below. Nothing else in the package may import ``ray._private``,
``ray.serve._private`` or an underscore name of Ray (``tests/test_layers.py`` checks it).
"""

from __future__ import annotations

from typing import Any


def keep_ray_on_loopback() -> None:
    """Undo an ``ENABLE_RAY_CLUSTER`` flag that Ray parsed before we set its variable.

    Why private: Ray reads ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` once, when ``ray`` is first
    imported, into ``ray._private.ray_constants``; no public API changes it afterwards.
    """
    from ray._private import ray_constants

    if getattr(ray_constants, "ENABLE_RAY_CLUSTER", False):
        ray_constants.ENABLE_RAY_CLUSTER = False


def replica_transport(handle: Any) -> Any:
    """``handle`` set to call replicas the way this process's Serve settings say (gRPC in
    throughput-optimized mode, Ray actor calls otherwise).

    Why private: ``_by_reference`` is the only handle option that picks the transport, and
    ``RAY_SERVE_USE_GRPC_BY_DEFAULT`` the only place the mode is read.
    """
    from ray.serve._private.constants import RAY_SERVE_USE_GRPC_BY_DEFAULT

    return handle.options(_by_reference=not RAY_SERVE_USE_GRPC_BY_DEFAULT)


def direct_ingress_targets(app_name: str) -> list[tuple[str, int]] | None:
    """(ip, port) of every ingress replica of ``app_name`` serving HTTP itself (empty while
    none is up); ``None`` when direct ingress is off or the controller could not be asked.

    Why private: Serve publishes these ports only through its controller's
    ``get_target_groups`` (the list its HAProxy balances over), with no public accessor.
    """
    import ray
    from ray.serve._private.common import RequestProtocol
    from ray.serve._private.constants import SERVE_PROXY_NAME
    from ray.serve.context import _get_global_client

    try:
        controller = _get_global_client()._controller
        groups = ray.get(controller.get_target_groups.remote(app_name))
    except Exception:  # noqa: BLE001 - a private API: if it changed, report nothing
        return None
    if not any(group.app_name for group in groups):
        return None  # direct ingress is off: Serve lists only its proxies
    return [
        (target.ip, target.port)
        for group in groups
        if group.protocol == RequestProtocol.HTTP and group.app_name
        for target in group.targets
        if not target.name.startswith(SERVE_PROXY_NAME)  # proxies stand in at 0 replicas
    ]


def delete_app_nowait(app_name: str) -> None:
    """Ask Serve's controller to delete an app without waiting for it.

    Why private: ``serve.delete`` blocks until the app is gone unless given ``_blocking``;
    a job being stopped has 3 s before Ray's SIGKILL, and the controller finishes alone.
    """
    from ray import serve

    serve.delete(app_name, _blocking=False)


def dashboard_url() -> str:
    """The connected cluster's dashboard address (``host:port``), for the Jobs API.

    Why private: ``ray.init`` returns it, but a process that joined Ray elsewhere (a test
    fixture, a benchmark helper) has no public accessor.
    """
    import ray

    return ray._private.worker.get_dashboard_url()  # noqa: SLF001
