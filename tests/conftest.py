"""Shared fixtures: offline environment, tiny local models, one local Ray per session.

Ray starts once per test session (``ray.init`` costs ~5 s), bound to loopback with the
dashboard on (Ray Train's clean-up needs it) and a few more logical CPUs than the machine
has cores, so a Serve replica and a 2-worker trainer can coexist on 2 cores.
"""

from __future__ import annotations

import os
import socket

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    from llmvm_ray.testing.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), "llama", seed=0)


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray for the whole session (shut down at the end)."""
    import ray

    from llmvm_ray.config import RayConfig
    from llmvm_ray.runtime import init_ray

    init_ray(RayConfig(num_cpus=8, include_dashboard=True))
    yield ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()
