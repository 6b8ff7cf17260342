"""Bad input gets a 4xx with an OpenAI-shaped JSON error naming the field: never a 500 or a
hang. Also auth and health."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.conftest import API_KEY

pytestmark = pytest.mark.ray

OK = {"model": "tiny", "prompt": "hello", "max_tokens": 4}


def post(url, path, body=None, content=None, key=API_KEY):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if content is not None:
        headers["Content-Type"] = "application/json"
        return httpx.post(url + path, content=content, headers=headers, timeout=60)
    return httpx.post(url + path, json=body, headers=headers, timeout=60)


CASES = [
    # (body changes, status, param)
    ({"prompt": None}, 400, "prompt"),
    ({"prompt": ""}, 400, "prompt"),
    ({"prompt": []}, 400, "prompt"),
    ({"prompt": 12}, 400, "prompt"),
    ({"model": None}, 400, "model"),
    ({"model": "nope"}, 404, "model"),
    ({"model": "tiny:nope"}, 404, "model"),
    ({"max_tokens": 0}, 400, "max_tokens"),
    ({"max_tokens": -3}, 400, "max_tokens"),
    ({"max_tokens": "many"}, 400, "max_tokens"),
    ({"max_tokens": 100000}, 400, "max_tokens"),
    ({"temperature": 2.5}, 400, "temperature"),
    ({"temperature": -1}, 400, "temperature"),
    ({"top_p": 0}, 400, "top_p"),
    ({"top_p": 1.5}, 400, "top_p"),
    ({"n": 0}, 400, "n"),
    ({"n": 99}, 400, "n"),
    ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ({"stop": [""]}, 400, "stop"),
    ({"seed": -1}, 400, "seed"),
    ({"guided_regex": "([a-z"}, 400, "guided_regex"),
    ({"guided_json": {"type": "nonsense"}}, 400, "guided_json"),
    ({"guided_choice": []}, 400, "guided_choice"),
    ({"guided_choice": ["a"], "guided_regex": "a"}, 400, "guided_regex"),
    ({"guided_type": "complex"}, 400, "guided_type"),
    ({"presence_penalty": 2.5}, 400, "presence_penalty"),
    ({"frequency_penalty": -3}, 400, "frequency_penalty"),
    ({"logit_bias": {"the": 1}}, 400, "logit_bias"),
    ({"logit_bias": {"5": 200}}, 400, "logit_bias"),
    ({"logit_bias": {"5": 1, "005": 2}}, 400, "logit_bias"),
    ({"logit_bias": {"99999999": 1}}, 400, "logit_bias"),  # outside the vocabulary
    ({"logit_bias": ["5"]}, 400, "logit_bias"),
    ({"logprobs": 3}, 400, "logprobs"),
    ({"stream": "yes"}, 400, "stream"),
]


@pytest.mark.parametrize("change, status, param", CASES, ids=[str(c[0]) for c in CASES])
def test_completion_bad_input(service, change, status, param):
    url, _ = service
    body = {k: v for k, v in {**OK, **change}.items() if v is not None}
    r = post(url, "/v1/completions", body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["param"] == param, error
    assert error["message"] and error["type"]
    assert r.json()["status"] == status  # LLM-VM clients read `status`


def test_streaming_bad_input_is_a_4xx_not_a_broken_stream(service):
    url, _ = service
    r = post(url, "/v1/completions", {**OK, "stream": True, "guided_regex": "(("})
    assert r.status_code == 400 and r.json()["error"]["param"] == "guided_regex"


@pytest.mark.parametrize(
    "content, param",
    [("{not json", "body"), ("[1, 2]", None), ('"text"', None), ("", "body")],
)
def test_non_json_bodies(service, content, param):
    url, _ = service
    r = post(url, "/v1/completions", content=content)
    assert r.status_code == 400, r.text
    if param:
        assert r.json()["error"]["param"] == param


@pytest.mark.parametrize(
    "body, param",
    [
        ({"model": "tiny"}, "messages"),
        ({"model": "tiny", "messages": []}, "messages"),
        ({"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
        (
            {
                "model": "tiny",
                "messages": [{"role": "user", "content": "x"}],
                "response_format": {"type": "json_schema"},
            },
            "response_format.json_schema",
        ),
    ],
)
def test_chat_bad_input(service, body, param):
    url, _ = service
    r = post(url, "/v1/chat/completions", body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_auth_required(service):
    url, _ = service
    assert post(url, "/v1/completions", OK, key=None).status_code == 401
    r = post(url, "/v1/completions", OK, key="wrong")
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert httpx.get(url + "/v1/models", timeout=30).status_code == 401
    bad = openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_unknown_route_is_json_404(service):
    url, _ = service
    r = httpx.get(url + "/v1/nothing-here", timeout=30)
    assert r.status_code == 404 and "error" in r.json()


def test_openai_client_sees_typed_errors(client):
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="missing", prompt="x")
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="tiny", prompt="x", max_tokens=10**6)
    assert info.value.param == "max_tokens"


def test_health(service):
    # Metrics are exported by Ray's metrics agents (tests/observability), not by the app.
    url, _ = service
    assert httpx.get(url + "/healthz", timeout=30).json() == {"status": "ok"}
