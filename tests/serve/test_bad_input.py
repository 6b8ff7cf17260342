"""Bad input gets a 4xx with an OpenAI-shaped JSON error naming the field: never a 500 or a
hang. Also auth and health."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from llmvm_ray.optimizer.task import tenant_of
from tests.conftest import API_KEY

pytestmark = pytest.mark.ray

OK = {"model": "tiny", "prompt": "hello", "max_tokens": 4}


def post(url, path, body=None, content=None, key=API_KEY):
    """POST ``body`` as JSON (NaN and Infinity included, as Python's json writes them), or
    ``content`` as it is."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if content is None:
        content = json.dumps(body)
    headers["Content-Type"] = "application/json"
    return httpx.post(url + path, content=content, headers=headers, timeout=60)


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
    # What the schema cannot express (the fuzzer's blind spots, test_fuzz.py).
    ({"logit_bias": {"\u00b2": 1}}, 400, "logit_bias"),  # a digit to isdigit(), not to int()
    ({"logit_bias": {"\u0663": 1}}, 400, "logit_bias"),  # Arabic-Indic 3
    ({"logit_bias": {"9" * 5000: 1}}, 400, "logit_bias"),  # past int()'s digit limit
    ({"logit_bias": {"5": float("inf")}}, 400, "logit_bias"),
    ({"logit_bias": {str(i): 1 for i in range(301)}}, 400, "logit_bias"),
    ({"temperature": float("nan")}, 400, "temperature"),
    ({"seed": 2**64}, 400, "seed"),
    ({"max_tokens": 10**30}, 400, "max_tokens"),
    ({"prompt": ["hi"] * 65}, 400, "prompt"),  # serve.max_prompts
    ({"prompt": ["hi", ""]}, 400, "prompt"),
    ({"prompt": "x" * 200_001}, 400, "prompt"),  # serve.max_prompt_chars
    ({"stop": ["x" * 257]}, 400, "stop"),  # serve.max_stop_chars
    ({"guided_choice": [f"c{i}" for i in range(257)]}, 400, "guided_choice"),
    ({"guided_regex": "a" * 70_000}, 400, "guided_regex"),  # serve.max_guide_chars
    (
        {"guided_json": {"properties": {f"k{i}": {"type": "string"} for i in range(3000)}}},
        400,
        "guided_json",
    ),
    ({"suffix": "x"}, 400, "suffix"),
    ({"best_of": 3}, 400, "best_of"),
    # The optimizer's extensions on a plain model: refused, not ignored.
    ({"context": "the task"}, 400, "context"),
    ({"finetune": True}, 400, "finetune"),
    ({"data_synthesis": True}, 400, "data_synthesis"),
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
        *(
            (
                {"model": "tiny", "messages": [{"role": "user", "content": "x"}], **change},
                param,
            )
            for change, param in [
                # OpenAI fields this server does not implement: refused, never ignored.
                ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
                ({"tool_choice": "auto"}, "tool_choice"),
                ({"functions": [{"name": "f"}]}, "functions"),
                ({"top_logprobs": 2}, "top_logprobs"),
                ({"modalities": ["text", "audio"]}, "modalities"),
                ({"context": "the task"}, "context"),
                (
                    {
                        "response_format": {
                            "type": "json_schema",
                            "json_schema": {"schema": {"enum": ["x" * 100] * 700}},
                        }
                    },
                    "response_format",
                ),
            ]
        ),
        ({"model": "tiny", "messages": [{"role": "user", "content": "x"}] * 257}, "messages"),
        (
            {"model": "tiny", "messages": [{"role": "user", "content": "x" * 200_001}]},
            "messages.0.content",
        ),
        (
            {"model": "tiny", "messages": [{"role": "user", "content": [{"type": "image"}]}]},
            "messages.0.content",
        ),
    ],
)
def test_chat_bad_input(service, body, param):
    url, _ = service
    r = post(url, "/v1/chat/completions", body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


TOOL = {"description": "search", "url": "https://tools.example.com/q"}


@pytest.mark.parametrize(
    "path, body, param",
    [
        # The optimizing endpoints check their limits before anything else (this service
        # runs no optimizer: a body within the limits would be a 503).
        ("/v1/complete", {"prompt": "p", "context": "c", "stoptoken": ["a"] * 5}, "stoptoken"),
        ("/v1/complete", {"prompt": "p", "context": "c", "tools": [TOOL] * 33}, "tools"),
        ("/v1/complete", {"prompt": "p", "context": "c" * 200_001}, "context"),
        ("/v1/agents/runs", {"question": "q" * 200_001}, "question"),
        ("/v1/agents/runs", {"question": "q", "tools": [TOOL] * 33}, "tools"),
        (
            "/v1/agents/runs",
            {"question": "q", "tools": [{**TOOL, "static_params": {"k" * 65: 1}}]},
            "tools.0",
        ),
        # Fine-tune bodies: every nested object is typed, junk in it is a 400 naming it.
        ("/v1/fine_tuning/jobs", {"method": "supervised"}, "method"),
        ("/v1/fine_tuning/jobs", {"method": {"type": "dpo"}}, "method"),
        ("/v1/fine_tuning/jobs", {"hyperparameters": [1]}, "hyperparameters"),
        ("/v1/fine_tuning/jobs", {"hyperparameters": {"beta": 1}}, "hyperparameters.beta"),
        (
            "/v1/fine_tuning/jobs",
            {"hyperparameters": {"n_epochs": "\u00b2"}},
            "hyperparameters.n_epochs",
        ),
        ("/v1/fine_tuning/jobs", {"metadata": {"k" * 65: "v"}}, "metadata"),
        ("/v1/fine_tuning/jobs", {"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ("/v1/fine_tuning/jobs", {"metadata": {"k": {"deep": [[[]]]}}}, "metadata.k"),
        ("/v1/fine_tuning/jobs", {"llmvm": "junk"}, "llmvm"),
        ("/v1/fine_tuning/jobs", {"llmvm": {"task_id": 5}}, "llmvm.task_id"),
        ("/v1/fine_tuning/jobs", {"llmvm": {"extra": {"a": [{}]}}}, "llmvm.extra"),
        (
            "/v1/fine_tuning/jobs",
            {"llmvm": {"hyperparameters": {"nonsense": {"a": [[{}]]}}}},
            "hyperparameters.nonsense",
        ),
        ("/v1/fine_tuning/jobs", {"integrations": [{"type": "wandb"}]}, "integrations"),
        ("/v1/fine_tuning/jobs", {"seed": -1}, "seed"),
    ],
)
def test_extension_and_nested_bad_input(service, path, body, param):
    url, _ = service
    if path == "/v1/fine_tuning/jobs":
        # A path in the caller's own area (so that the nested field is what is refused).
        own = f"datasets/{tenant_of(API_KEY)}/none.parquet"
        body = {"model": "tiny", "training_file": own, **body}
    r = post(url, path, body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param, r.json()


def test_body_size_is_refused_before_parsing_and_auth(service):
    url, config = service
    huge = b'{"model": "tiny", "prompt": "' + b"x" * config.serve.max_body_bytes + b'"}'
    for key in (API_KEY, "wrong", None):
        r = post(url, "/v1/completions", content=huge, key=key)
        assert r.status_code == 413, r.text
        assert r.json()["error"]["param"] == "body"
        assert r.json()["error"]["code"] == "request_too_large"


def test_deeply_nested_json_is_a_400(service):
    url, _ = service
    junk = "[" * 100_000 + "]" * 100_000
    r = post(url, "/v1/completions", content='{"model": "tiny", "prompt": "x", "m": ' + junk + "}")
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "body"


def test_batch_with_one_invalid_prompt_cancels_the_others(service, tiny_llama):
    """The long prompt exceeds the context; the short one, forbidden to end (EOS biased
    away), would decode all its tokens if its generation were not cancelled."""
    import time

    from ray import serve
    from transformers import AutoTokenizer

    from llmvm_ray.runtime import deployment_name

    url, config = service
    model = config.model("tiny")
    replica = serve.get_deployment_handle(deployment_name(model), config.serve.app_name)

    def row_steps() -> int:
        return replica.info.remote().result()["decoding"]["row_steps"]

    eos = AutoTokenizer.from_pretrained(tiny_llama).eos_token_id
    before = row_steps()
    body = {
        **OK,
        "prompt": ["hello", "word " * 400],
        "max_tokens": 200,
        "logit_bias": {str(eos): -100},
    }
    r = post(url, "/v1/completions", body)
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens", r.text
    time.sleep(3)  # time enough to decode the 200 tokens, were the row still running
    assert row_steps() - before < 100


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
