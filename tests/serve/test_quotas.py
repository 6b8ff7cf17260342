"""Per-tenant quotas at the edge and in the optimizer: a 429 with ``Retry-After``, and one
tenant's use never spends another's (the real routes; no model is needed for these)."""

from __future__ import annotations

import asyncio

import pytest
from fastapi.testclient import TestClient

from llmvm_ray.config import Config
from llmvm_ray.errors import RateLimitError
from llmvm_ray.optimizer.actor import OptimizerActor
from llmvm_ray.optimizer.task import TaskSpec
from llmvm_ray.serve.routes import create_app
from llmvm_ray.serve.service import OpenAIService


def test_requests_per_second_per_tenant():
    config = Config.model_validate(
        {
            "models": [{"name": "tiny", "model_uri": "x"}],
            "serve": {"api_keys": ["sk-a", "sk-b"]},
            "quotas": {"requests_per_s": 0.5, "burst_s": 4},
        }
    )
    with TestClient(create_app(OpenAIService(config, {}))) as client:
        a = {"Authorization": "Bearer sk-a"}
        b = {"Authorization": "Bearer sk-b"}
        assert [client.get("/v1/models", headers=a).status_code for _ in range(2)] == [200, 200]
        refused = client.get("/v1/models", headers=a)
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["type"] == "rate_limit_error"
        assert 0 < int(refused.headers["retry-after"]) <= 2
        assert client.get("/v1/models", headers=b).status_code == 200  # its own bucket


def test_a_flood_of_new_contexts_stops_at_the_tasks_quota(tmp_path):
    config = Config.model_validate(
        {
            "storage_path": str(tmp_path),
            "models": [{"name": n, "model_uri": "x"} for n in ("teacher", "student")],
            "quotas": {"max_tasks": 3},
        }
    )
    actor = OptimizerActor(config)

    def route(tenant: str, context: str):
        spec = TaskSpec(tenant, context, "teacher", "student", max_tokens=8)
        return asyncio.run(actor.route(spec.to_dict(), finetune=True))

    for i in range(3):
        route("flooder", f"context {i}")
    route("flooder", "context 0")  # an existing task is fine
    with pytest.raises(RateLimitError) as info:
        route("flooder", "context 3")
    assert info.value.status == 429 and info.value.retry_after_s == 30.0
    route("someone else", "context 3")
    assert len(actor.tasks) == 4


@pytest.mark.parametrize("public", [False, True])
def test_the_api_description_follows_the_auth_rule(public):
    config = Config.model_validate(
        {
            "models": [{"name": "tiny", "model_uri": "x"}],
            "serve": {"api_keys": ["sk-a"], "public_docs": public},
        }
    )
    with TestClient(create_app(OpenAIService(config, {}))) as client:
        anonymous = client.get("/openapi.json")
        keyed = client.get("/openapi.json", headers={"Authorization": "Bearer sk-a"})
        docs = client.get("/docs")
    assert keyed.status_code == 200 and "/v1/completions" in keyed.json()["paths"]
    assert anonymous.status_code == (200 if public else 401)
    assert docs.status_code == (200 if public else 404)
