"""Fixtures for the engine tests: tiny models, LoRA adapters and engines built locally.

``tiny_llama`` comes from ``tests/conftest.py``; everything is built once per session in a
few seconds and nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from llmvm_ray.engine import Engine
from tests.engine.helpers import model_config

ADAPTER_SEEDS = {"alpha": 1, "beta": 2, "gamma": 3}


@pytest.fixture(scope="package", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Run the tiny models on one thread.

    With torch's default of one OpenMP thread per core, any other busy process on a 2-core
    machine makes the threads spin-wait on each other: a 16-row batch measured 8.7 s instead
    of 0.025 s. One thread is also the fastest setting for models this small.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from llmvm_ray.dev.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-gpt2"), "gpt2", seed=0)


def make_lora(base_dir: Path, out_dir: Path, seed: int) -> Path:
    """A randomly initialised LoRA adapter (r=4 on q/v projections) that changes outputs.

    ``init_lora_weights=False`` makes B non-zero, and a large alpha makes the change big
    enough to flip a random tiny model's greedy choices.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir)
    config = LoraConfig(
        r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = get_peft_model(base, config)
    model.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def lora_adapters(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three different LoRA adapters for ``tiny_llama``, by name."""
    root = tmp_path_factory.mktemp("adapters")
    return {
        name: make_lora(Path(tiny_llama), root / name, seed) for name, seed in ADAPTER_SEEDS.items()
    }


@pytest.fixture(scope="session")
def engine(tiny_llama: Path) -> Engine:
    """A shared llama engine; tests that change its adapter set must use their own."""
    return Engine(model_config(Path(tiny_llama)))


@pytest.fixture(scope="session")
def gpt2_engine(tiny_gpt2: Path) -> Engine:
    return Engine(model_config(tiny_gpt2))
