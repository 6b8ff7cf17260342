"""Every operation of the published OpenAPI document (docs/openapi.json), fuzzed with
schemathesis against the real service over HTTP: a tiny local model as base, teacher and
student, the optimizer and the agents on. Whatever a client sends, the answer is a success
or a 4xx with OpenAI's error shape, never a 5xx.

Deterministic (a fixed seed, hypothesis derandomized) and bounded (``MAX_EXAMPLES`` per
operation plus schemathesis' coverage cases; about two minutes on 2 cores with the service's
start). The service runs with tight limits (``serve.max_*``, a 64-token context) so that
valid cases are cheap to answer and the fuzzer also meets every limit. What the schema cannot
express (unicode digits, huge lists, deep junk) is in ``test_bad_input.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

pytestmark = pytest.mark.ray

KEY = "sk-fuzz"
MAX_EXAMPLES = 12
OPENAPI = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
# The fuzzer rarely spells a served model: these names send most cases past `model` to a
# replica, the optimizer or a 404.
MODELS = ["tiny", "llmvm", "tiny:nope"]


def _schema() -> schemathesis.BaseSchema:
    document = json.loads(OPENAPI.read_text())
    for name in ("CompletionRequest", "ChatCompletionRequest"):
        document["components"]["schemas"][name]["properties"]["model"] = {
            "type": "string",
            "enum": MODELS,
        }
    config = schemathesis.Config.from_dict({"seed": 16, "phases": {"stateful": {"enabled": False}}})
    return schemathesis.openapi.from_dict(document, config=config)


schema = _schema()


@pytest.fixture(scope="module")
def fuzz_url(ray_session, serve_port, tmp_path_factory):
    from llmvm_ray.config import load_config
    from llmvm_ray.dev.tiny import build_tiny_model
    from llmvm_ray.serve.deploy import ServiceRunner

    root = tmp_path_factory.mktemp("fuzz")
    model = build_tiny_model(root / "tiny", "llama", seed=0)
    config = load_config(
        overrides={
            "storage_path": str(root / "storage"),
            "registry": {"actor_name": "test-fuzz-registry"},
            "serve": {
                "port": serve_port,
                "app_name": "test-fuzz",
                "route_prefix": "/test-fuzz",
                "api_keys": [KEY],
                "max_prompts": 4,
                "max_n": 2,
                "max_prompt_chars": 2000,
                "max_messages": 8,
                "max_tools": 4,
                "max_body_bytes": 256 * 1024,
            },
            "teacher": {"model": "tiny"},
            "optimizer": {
                "student_model": "tiny",
                "min_train_examples": 1000,
                "default_max_tokens": 8,
            },
            "agents": {
                "allowed_hosts": ["tools.invalid"],  # every fuzzed tool URL is refused
                "pool_size": 1,
                "max_model_calls": 3,
                "step_max_tokens": 4,
                "run_timeout_s": 20,
            },
            "models": [
                {
                    "name": "tiny",
                    "model_uri": str(model),
                    "num_cpus": 0.5,
                    "max_model_len": 64,
                    "default_max_tokens": 4,
                }
            ],
        }
    )
    runner = ServiceRunner(config, shutdown_ray=False).start()
    url = runner.url
    httpx.get(url + "/healthz", timeout=60).raise_for_status()
    yield url
    runner.stop()


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_5xx_and_every_4xx_is_an_openai_error(case, fuzz_url):
    response = case.call(base_url=fuzz_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    assert response.status_code < 500, (case.as_curl_command(), response.text[:500])
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}, error
        assert error["message"] and error["type"], error
