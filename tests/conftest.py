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
# Spinning OpenMP threads waste shared cores (measured: a training step 2.6 s vs 0.2 s under
# load); only effective before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def submit_job(client, timeout_s: float = 60.0, **job) -> str:
    """``client.submit_job(**job)``, retried while the node's job agent has not registered
    yet: it comes up a moment after the dashboard answers, and a clean CI machine once got
    "No available agent to submit job" (a 500) for a job submitted at once."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return client.submit_job(**job)
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    from llmvm_ray.dev.tiny import build_tiny_model

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


# -- one real Serve deployment of a tiny model (with two LoRA adapters) -------------------

API_KEY = "sk-test-key"


def make_adapter(model_dir, out_dir, seed: int):
    """A randomly initialised LoRA adapter (so it visibly changes outputs), saved PEFT-style."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    lora = LoraConfig(
        r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    peft_model = get_peft_model(model, lora)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.mul_(8.0)
    peft_model.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def adapters(tiny_llama, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return {
        "a1": make_adapter(tiny_llama, root / "a1", seed=1),
        "a2": make_adapter(tiny_llama, root / "a2", seed=2),
    }


@pytest.fixture(scope="session")
def serve_port(ray_session):
    """Serve runs one HTTP proxy per cluster: start it here so every app of the session,
    whichever deploys first, shares this port."""
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    return port


def plain_serving_config(
    storage, serve_port, tiny_llama, adapters, app_name, route_prefix="/", **model
):
    """Plain serving (no optimizer) of ``tiny`` with adapters a1/a2 as app ``app_name``;
    ``model`` overrides fields of the model entry."""
    from llmvm_ray.config import load_config

    return load_config(
        overrides={
            "storage_path": str(storage),
            "optimizer": {"enabled": False},
            "registry": {"actor_name": f"{app_name}-registry"},
            "serve": {
                "port": serve_port,
                "api_keys": [API_KEY],
                "app_name": app_name,
                "route_prefix": route_prefix,
            },
            "models": [
                {
                    "name": "tiny",
                    "model_uri": str(tiny_llama),
                    "adapters": {k: str(v) for k, v in adapters.items()},
                    "num_cpus": 0.5,
                    "max_adapters_per_replica": 2,
                    **model,
                }
            ],
        }
    )


@pytest.fixture(scope="session")
def service(ray_session, serve_port, tiny_llama, adapters, tmp_path_factory):
    """The running service (plain serving, no optimizer): yields (base_url, config)."""
    from llmvm_ray.serve.deploy import ServiceRunner

    config = plain_serving_config(
        tmp_path_factory.mktemp("serve-storage"), serve_port, tiny_llama, adapters, "test-serve"
    )
    runner = ServiceRunner(config, shutdown_ray=False).start()
    yield runner.url, config
    runner.stop()


@pytest.fixture(scope="session")
def direct_url(service):
    """The ingress replica's own HTTP address (Serve's throughput-optimized mode, on by
    default for a Ray that ``init_ray`` starts)."""
    from llmvm_ray.serve.deploy import ServiceRunner

    urls = ServiceRunner(service[1]).direct_urls()
    assert urls, "no direct ingress address: is ray.serve_throughput_optimized off?"
    return urls[0]


@pytest.fixture()
def client(service):
    import openai

    url, _ = service
    return openai.OpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0, timeout=60)
