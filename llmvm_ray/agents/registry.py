"""The agents by name (the ``agent`` field of requests, ``--agent`` of the CLI)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from llmvm_ray.agents.backward import BackwardAgent
from llmvm_ray.agents.base import Agent
from llmvm_ray.agents.flat import FlatAgent
from llmvm_ray.agents.rebel import RebelAgent

AGENTS: Mapping[str, type[Agent]] = MappingProxyType(
    {"rebel": RebelAgent, "backward": BackwardAgent, "flat": FlatAgent}
)
