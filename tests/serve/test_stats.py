"""``GET /v1/stats`` on an application without the optimizer (the session's plain service):
fine-tunes still come from the registry, optimizing counts are zero."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import API_KEY

pytestmark = pytest.mark.ray


def test_stats_without_optimizer(service):
    url, _ = service
    headers = {"Authorization": f"Bearer {API_KEY}"}
    stats = httpx.get(f"{url}/v1/stats", headers=headers, timeout=60)
    assert stats.status_code == 200, stats.text
    body = stats.json()
    assert body["object"] == "llmvm.stats" and body["optimizer_enabled"] is False
    assert body["requests"] == {"total": 0, "teacher": 0, "student": 0, "shadow": 0}
    assert body["share"] == {"teacher": None, "student": None}
    assert body["tasks"]["by_route"] == {"teacher": 0, "student": 0}
    # The fine-tunes are this tenant's registry records, as the fine-tuning API lists them.
    jobs = httpx.get(f"{url}/v1/fine_tuning/jobs?limit=100", headers=headers, timeout=60)
    listed = jobs.json()["data"]
    assert body["fine_tunes"]["total"] == len(listed)
    for state, count in body["fine_tunes"]["by_state"].items():
        assert count == sum(j["status"].upper() == state for j in listed), state
    assert httpx.get(f"{url}/v1/stats", timeout=30).status_code == 401
