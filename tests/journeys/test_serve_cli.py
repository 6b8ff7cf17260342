"""``llmvm serve`` against a ``ray start --head`` cluster, then the LLM-VM ``Client`` and the
``openai`` client as users call them (no optional fields).

Before issue 16: two models at the default 1 CPU each on a small cluster never became
healthy and the command waited silently; ``/v1/complete`` without ``max_tokens`` (as LLM-VM
users send it) was refused whenever the model's context was not larger than 256 tokens.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time

import openai
import pytest

from llmvm_ray.client import Client
from tests.conftest import free_port
from tests.journeys.conftest import LLMVM, llmvm, user_env, write_toml

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def small_context_models(tmp_path_factory):
    """Teacher and student with a 128-token context: less than /v1/complete's default 256."""
    from llmvm_ray.dev.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("journey-serve-models")
    return {
        name: str(build_tiny_model(root / name, "llama", seed=seed, max_position_embeddings=128))
        for name, seed in (("teacher", 1), ("student", 2))
    }


def serve_config(path, storage, port: int, models: dict[str, str], num_cpus: float):
    config = write_toml(
        path,
        {
            "storage_path": str(storage),
            "serve": {"port": port, "app_name": "journey"},
            "teacher": {"model": "teacher"},
            "optimizer": {"student_model": "student"},
            "registry": {"actor_name": "journey-serve-registry"},
        },
    )
    with config.open("a") as out:
        for name, uri in models.items():
            out.write(f'[[models]]\nname = "{name}"\nmodel_uri = "{uri}"\n')
            out.write(f"num_cpus = {num_cpus}\ndefault_max_tokens = 100\n")
    return str(config)


def test_serve_that_cannot_fit_fails_fast_naming_the_numbers(head, small_context_models, tmp_path):
    config = serve_config(tmp_path / "big.toml", tmp_path, free_port(), small_context_models, 3)
    started = time.monotonic()
    done = llmvm("serve", "-c", config, "--address", head.gcs_address, env=user_env(head))
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert time.monotonic() - started < 100  # fails before waiting on Serve, not after
    assert "needs 6.1 CPUs" in output and "cluster has 4" in output, output
    assert "models[].num_cpus" in output, output


def test_serve_then_the_llmvm_client_without_optional_fields(head, small_context_models, tmp_path):
    port = free_port()
    config = serve_config(tmp_path / "ok.toml", tmp_path, port, small_context_models, 0.5)
    proc = subprocess.Popen(
        [LLMVM, "serve", "-c", config, "--address", head.gcs_address],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=user_env(head),
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while not any("llmvm is serving" in line for line in lines):
            assert proc.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "".join(lines)
            time.sleep(0.5)
        # Progress while Serve deployed: the app's status lines, not silence.
        assert any("DEPLOYING" in line or "RUNNING" in line for line in lines), "".join(lines)
        client = Client(big_model="teacher", small_model="student", url=url)
        answer = client.complete("Input: March 5, 2021\nOutput:", context="Convert the date.\n")
        assert answer["status"] == 200, answer
        assert answer["llmvm"]["served_by"] == "teacher"
        # The official client, no max_tokens either: prompt + the default 100 do not fit in
        # 128 tokens, so it gets what fits.
        oa = openai.OpenAI(base_url=f"{url}/v1", api_key="none")
        long_prompt = "Input: March 5, 2021 " * 5
        r = oa.completions.create(model="teacher", prompt=long_prompt, temperature=0)
        assert 100 + r.usage.prompt_tokens > 128, r.usage
        assert r.usage.prompt_tokens + r.usage.completion_tokens <= 128
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
        reader.join(timeout=10)
    assert proc.returncode == 0, "".join(lines)
