"""Journeys run the way users run them: the ``llmvm`` command in a subprocess against a
cluster started as the docs say (``ray start --head`` on loopback), one cluster per module."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ops.cluster import cluster_env, start_head

LLMVM = str(Path(sys.executable).with_name("llmvm"))


@pytest.fixture(scope="module")
def head():
    h = start_head(num_cpus=4)
    yield h
    h.stop()


def llmvm(*args: str, env: dict[str, str], timeout_s: float = 300.0) -> subprocess.CompletedProcess:
    """One ``llmvm`` command, as a user types it, in its own process."""
    return subprocess.run(
        [LLMVM, *args], env=env, capture_output=True, text=True, timeout=timeout_s, check=False
    )


def user_env(head, **extra: str) -> dict[str, str]:
    """A user's shell after the docs' set-up: the cluster's environment, RAY_ADDRESS set."""
    env = cluster_env()
    env["RAY_ADDRESS"] = head.gcs_address
    env.update(extra)
    return env


def write_toml(path: Path, data: dict) -> Path:
    """A config file (top-level keys first, then one table per section)."""
    lines = [f"{k} = {json.dumps(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for section, values in data.items():
        if isinstance(values, dict):
            lines.append(f"[{section}]")
            lines += [f"{k} = {_toml(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml(value) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)
