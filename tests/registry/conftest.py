"""Registry fixtures; the session's local Ray is ``ray_session`` from tests/conftest.py."""

from __future__ import annotations

import contextlib
import uuid

import pytest


@pytest.fixture
def registry_config(tmp_path):
    """A config with its own storage and its own registry actor; the actor is killed after."""
    import ray

    from llmvm_ray.config import load_config

    config = load_config(
        overrides={
            "storage_path": str(tmp_path / "store"),
            "registry": {
                "actor_name": f"test-registry-{uuid.uuid4().hex[:8]}",
                "reconcile_interval_s": 0.3,
                "attach_timeout_s": 5.0,
            },
        }
    )
    yield config
    if ray.is_initialized():
        with contextlib.suppress(ValueError):
            ray.kill(ray.get_actor(config.registry.actor_name, namespace=config.ray.namespace))
