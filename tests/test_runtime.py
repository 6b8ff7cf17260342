"""Joining Ray: a locally started Ray stays on loopback."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.ray

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def test_a_local_ray_listens_on_loopback_only(ray_session):
    """The session's Ray was started by ``init_ray`` after ``ray`` had been imported (by the
    fixture), the case where Ray would otherwise bind every interface."""
    import psutil
    import ray

    assert {node["NodeManagerAddress"] for node in ray.nodes()} == {"127.0.0.1"}
    me = psutil.Process()
    exposed = []
    for process in [me, *me.children(recursive=True)]:
        try:
            connections = process.net_connections(kind="inet")
        except psutil.Error:
            continue  # exited meanwhile
        name = process.name()
        exposed += [
            (name, f"{c.laddr.ip}:{c.laddr.port}")
            for c in connections
            if c.status == psutil.CONN_LISTEN
            and c.laddr.ip not in LOOPBACK
            # Ray Serve 2.60 binds each replica's inter-deployment gRPC server to "[::]:0"
            # unconditionally (ray/serve/_private/replica.py); nothing configures it.
            and not (name.startswith("ray::ServeReplica") and c.laddr.ip == "::")
        ]
    assert exposed == []
